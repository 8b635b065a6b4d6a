//! The `--leader-elect*` command-line flags, named and defaulted like upstream's component-base
//! ones, shared by every leader-elected daemon (scheduler, controller-manager,
//! cloud-controller-manager).
//!
//! Each daemon's flag struct flattens this one (`#[command(flatten)]` for clap,
//! `#[serde(flatten)]` for the serialized override layer that goes on top of the TOML file).
//! The TOML side keeps the keys as plain fields of each daemon's config: serde's `flatten`
//! cannot be combined with `deny_unknown_fields`, which the config files need so a misspelled
//! key is an error naming it. Durations are parsed and checked by [`crate::duration`].

use serde::Serialize;

/// Optional leader-election flags: the ones given override the config file.
#[derive(clap::Args, Debug, Default, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct LeaderElectFlags {
    /// Start a leader election client and gain leadership before doing any work.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader_elect: Option<bool>,
    /// How long non-leaders wait after observing a renewal before trying to take over (e.g. 15s).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader_elect_lease_duration: Option<String>,
    /// How long the leader retries renewing before giving up (e.g. 10s).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader_elect_renew_deadline: Option<String>,
    /// How long clients wait between attempts to acquire or renew (e.g. 2s).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader_elect_retry_period: Option<String>,
    /// Namespace of the leader election Lease.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader_elect_resource_namespace: Option<String>,
    /// Name of the leader election Lease.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader_elect_resource_name: Option<String>,
}
