//! kelson-scheduler configuration: flags named like kube-scheduler's, the same keys in TOML,
//! plus `[[profiles]]` with per-plugin score weights (upstream's KubeSchedulerConfiguration
//! profiles, reduced to what this scheduler implements).
//!
//! Layering as for every Kelson daemon: defaults, then `--config` TOML, then flags (each flag an
//! `Option`, so "not given" differs from "given the default"). Unknown keys are errors.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::plugins::Weights;

/// Command-line flags (kube-scheduler's names).
#[derive(clap::Args, Debug, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct SchedulerFlags {
    /// Path to a kubeconfig file with the API server's address and credentials.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
    /// `--leader-elect*`, as upstream's.
    #[command(flatten)]
    #[serde(flatten)]
    pub leader: kelson_kube::LeaderElectFlags,
    /// Percentage of feasible nodes to look for in big clusters (0 = adaptive).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percentage_of_nodes_to_score: Option<u32>,
    /// Initial back-off for unschedulable pods, in seconds.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_initial_backoff_seconds: Option<u64>,
    /// Maximum back-off for unschedulable pods, in seconds.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_max_backoff_seconds: Option<u64>,
}

/// One scheduling profile: pods whose `spec.schedulerName` is `scheduler-name` are scheduled
/// with these weights.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Profile {
    pub scheduler_name: String,
    #[serde(default)]
    pub weights: Weights,
}

/// The effective configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct SchedulerConfig {
    pub kubeconfig: Option<PathBuf>,
    pub leader_elect: bool,
    pub leader_elect_lease_duration: String,
    pub leader_elect_renew_deadline: String,
    pub leader_elect_retry_period: String,
    pub leader_elect_resource_namespace: String,
    pub leader_elect_resource_name: String,
    pub percentage_of_nodes_to_score: u32,
    pub pod_initial_backoff_seconds: u64,
    pub pod_max_backoff_seconds: u64,
    pub profiles: Vec<Profile>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            kubeconfig: None,
            leader_elect: true,
            leader_elect_lease_duration: "15s".into(),
            leader_elect_renew_deadline: "10s".into(),
            leader_elect_retry_period: "2s".into(),
            leader_elect_resource_namespace: "kube-system".into(),
            leader_elect_resource_name: "kube-scheduler".into(),
            percentage_of_nodes_to_score: 0,
            pod_initial_backoff_seconds: 1,
            pod_max_backoff_seconds: 10,
            profiles: vec![Profile {
                scheduler_name: "default-scheduler".into(),
                weights: Weights::default(),
            }],
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

impl SchedulerConfig {
    /// Checks cross-field rules; returns (lease, renew, retry).
    pub fn leader_timings(&self) -> Result<(Duration, Duration, Duration), ConfigError> {
        kelson_kube::duration::leader_timings(
            &self.leader_elect_lease_duration,
            &self.leader_elect_renew_deadline,
            &self.leader_elect_retry_period,
        )
        .map_err(ConfigError::Invalid)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.leader_timings()?;
        if self.profiles.is_empty() {
            return Err(ConfigError::Invalid(
                "at least one profile is required".into(),
            ));
        }
        let mut names: Vec<&str> = self
            .profiles
            .iter()
            .map(|p| p.scheduler_name.as_str())
            .collect();
        names.sort();
        names.dedup();
        if names.len() != self.profiles.len() {
            return Err(ConfigError::Invalid(
                "duplicate profile scheduler-name".into(),
            ));
        }
        if self.percentage_of_nodes_to_score > 100 {
            return Err(ConfigError::Invalid(
                "percentage-of-nodes-to-score must be 0..=100".into(),
            ));
        }
        if self.pod_initial_backoff_seconds == 0
            || self.pod_max_backoff_seconds < self.pod_initial_backoff_seconds
        {
            return Err(ConfigError::Invalid(
                "pod back-off: need 0 < initial <= max".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15s").unwrap(), Duration::from_secs(15));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("15").is_err());
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn toml_profiles_and_weights() {
        let cfg: SchedulerConfig = kelson_runtime::config::load_str(
            "leader-elect = false\n[[profiles]]\nscheduler-name = \"default-scheduler\"\n[[profiles]]\nscheduler-name = \"spread\"\n[profiles.weights]\nPodTopologySpread = 10\n",
            std::path::Path::new("test.toml"),
            Default::default(),
        )
        .unwrap();
        assert_eq!(cfg.profiles.len(), 2);
        assert_eq!(cfg.profiles[1].weights.pod_topology_spread, 10);
        assert_eq!(cfg.profiles[1].weights.taint_toleration, 3);
        cfg.validate().unwrap();
        let bad = kelson_runtime::config::load_str::<SchedulerConfig>(
            "[[profiles]]\nscheduler-name = \"x\"\n[profiles.weights]\nNoSuchPlugin = 1\n",
            std::path::Path::new("test.toml"),
            Default::default(),
        );
        assert!(bad.is_err());
        let c = SchedulerConfig {
            leader_elect_renew_deadline: "20s".into(),
            ..Default::default()
        };
        assert!(c.validate().is_err());
    }
}
