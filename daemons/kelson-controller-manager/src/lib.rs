//! kelson-controller-manager: every built-in controller in one process, as
//! kube-controller-manager.
//!
//! Start-up order: build the API client from `--kubeconfig`, register the enabled controllers
//! (each wires its handlers into the shared informers, see [`controllers`]), start the used
//! informers and wait until they have listed — only then report `READY=1` (the API is
//! reachable and the caches are synced). Then leader election on the
//! `kube-system/kube-controller-manager` Lease (upstream's flags and defaults); workers run
//! only while leading. Losing the lease ends the process with an error, as upstream does, so
//! systemd restarts it as a clean standby and no controller ever acts on a stale view next to
//! the new leader.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use k8s_openapi::api::coordination::v1::Lease;
use kelson_kube::LeaderElectionConfig;
use kelson_runtime::config::CommonArgs;
use kelson_runtime::dbus::{DaemonState, Lifecycle};
use kelson_runtime::logging::LogHandle;
use kelson_runtime::signals;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

pub mod controllers;
pub mod dbus;
pub mod events;
pub mod informer;
pub mod queue;
pub mod util;

/// Command-line flags, named like kube-controller-manager's. All optional: given ones
/// override the TOML file.
#[derive(clap::Args, Debug, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct CmFlags {
    /// Path to a kubeconfig file with the API server address and credentials.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
    /// `--leader-elect*`, as upstream's.
    #[command(flatten)]
    #[serde(flatten)]
    pub leader: kelson_kube::LeaderElectFlags,
    /// Controllers to enable: `*` for the defaults, `foo` to enable, `-foo` to disable.
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub controllers: Option<Vec<String>>,
    /// CA bundle published in every namespace as the kube-root-ca.crt ConfigMap.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_ca_file: Option<PathBuf>,
    /// How long a node may go without renewing its Lease before it is marked unhealthy.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_monitor_grace_period: Option<String>,
    /// How often node health is checked.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_monitor_period: Option<String>,
    /// A zone is unhealthy (no evictions) when this fraction of its nodes is not ready.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unhealthy_zone_threshold: Option<f64>,
    /// Nodes per second given the NoExecute taint (evicted) in a healthy or fully disrupted zone.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_eviction_rate: Option<f64>,
    /// Nodes per second evicted in a partially disrupted zone of a large cluster.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secondary_node_eviction_rate: Option<f64>,
    /// Zones with at most this many nodes stop evicting when partially disrupted.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub large_cluster_size_threshold: Option<u32>,
    /// Allocate a podCIDR per node from --cluster-cidr.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocate_node_cidrs: Option<bool>,
    /// The IPv4 range pod CIDRs are allocated from (e.g. 10.244.0.0/16).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_cidr: Option<String>,
    /// Prefix length of each node's podCIDR.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_cidr_mask_size: Option<u8>,
    /// PEM CA certificate the csrsigning controller issues cluster-scoped certificates with.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_signing_cert_file: Option<PathBuf>,
    /// PEM private key of --cluster-signing-cert-file.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_signing_key_file: Option<PathBuf>,
    /// The longest lifetime of a signed certificate (default 8760h); a request's
    /// spec.expirationSeconds can only shorten it.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_signing_duration: Option<String>,
}

/// The effective configuration (defaults ← TOML ← flags).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct CmConfig {
    pub kubeconfig: Option<PathBuf>,
    pub leader_elect: bool,
    pub leader_elect_lease_duration: String,
    pub leader_elect_renew_deadline: String,
    pub leader_elect_retry_period: String,
    pub leader_elect_resource_namespace: String,
    pub leader_elect_resource_name: String,
    pub controllers: Vec<String>,
    pub root_ca_file: Option<PathBuf>,
    pub node_monitor_grace_period: String,
    pub node_monitor_period: String,
    pub unhealthy_zone_threshold: f64,
    pub node_eviction_rate: f64,
    pub secondary_node_eviction_rate: f64,
    pub large_cluster_size_threshold: u32,
    pub allocate_node_cidrs: bool,
    pub cluster_cidr: Option<String>,
    pub node_cidr_mask_size: u8,
    pub cluster_signing_cert_file: Option<PathBuf>,
    pub cluster_signing_key_file: Option<PathBuf>,
    pub cluster_signing_duration: String,
}

impl Default for CmConfig {
    fn default() -> Self {
        CmConfig {
            kubeconfig: None,
            leader_elect: true,
            leader_elect_lease_duration: "15s".into(),
            leader_elect_renew_deadline: "10s".into(),
            leader_elect_retry_period: "2s".into(),
            leader_elect_resource_namespace: "kube-system".into(),
            leader_elect_resource_name: "kube-controller-manager".into(),
            controllers: vec!["*".into()],
            root_ca_file: None,
            node_monitor_grace_period: "50s".into(),
            node_monitor_period: "5s".into(),
            unhealthy_zone_threshold: 0.55,
            node_eviction_rate: 0.1,
            secondary_node_eviction_rate: 0.01,
            large_cluster_size_threshold: 50,
            allocate_node_cidrs: false,
            cluster_cidr: None,
            node_cidr_mask_size: 24,
            cluster_signing_cert_file: None,
            cluster_signing_key_file: None,
            cluster_signing_duration: "8760h".into(),
        }
    }
}

fn dur(name: &str, v: &str) -> anyhow::Result<Duration> {
    util::parse_duration(v).map_err(|e| anyhow::anyhow!("--{name}: {e}"))
}

impl CmConfig {
    /// Checks everything that can be checked before connecting.
    pub fn settings(&self) -> anyhow::Result<controllers::Settings> {
        controllers::validate_list(&self.controllers)
            .map_err(|e| anyhow::anyhow!("--controllers: {e}"))?;
        if self.allocate_node_cidrs && self.cluster_cidr.is_none() {
            bail!("--allocate-node-cidrs requires --cluster-cidr");
        }
        for (flag, rate) in [
            ("node-eviction-rate", self.node_eviction_rate),
            (
                "secondary-node-eviction-rate",
                self.secondary_node_eviction_rate,
            ),
        ] {
            if !rate.is_finite() || rate < 0.0 {
                bail!("--{flag}: {rate} is not a rate (nodes per second, >= 0)");
            }
        }
        if !(0.0..=1.0).contains(&self.unhealthy_zone_threshold) {
            bail!(
                "--unhealthy-zone-threshold: {} is not a fraction in [0, 1]",
                self.unhealthy_zone_threshold
            );
        }
        if let Some(c) = &self.cluster_cidr {
            controllers::nodelifecycle::parse_cidr(c)
                .map_err(|e| anyhow::anyhow!("--cluster-cidr: {e}"))?;
        }
        Ok(controllers::Settings {
            root_ca_file: self.root_ca_file.clone(),
            node_monitor_grace_period: dur(
                "node-monitor-grace-period",
                &self.node_monitor_grace_period,
            )?,
            node_monitor_period: dur("node-monitor-period", &self.node_monitor_period)?,
            cluster_cidr: if self.allocate_node_cidrs || self.cluster_cidr.is_some() {
                self.cluster_cidr.clone()
            } else {
                None
            },
            node_cidr_mask_size: self.node_cidr_mask_size,
            unhealthy_zone_threshold: self.unhealthy_zone_threshold,
            node_eviction_rate: self.node_eviction_rate,
            secondary_node_eviction_rate: self.secondary_node_eviction_rate,
            large_cluster_size_threshold: self.large_cluster_size_threshold as usize,
            cluster_signing: controllers::csrsigning::load_from(
                self.cluster_signing_cert_file.as_deref(),
                self.cluster_signing_key_file.as_deref(),
                dur("cluster-signing-duration", &self.cluster_signing_duration)?,
            )
            .context("--cluster-signing-cert-file/--cluster-signing-key-file")?,
        })
    }
}

/// The daemon: connect, sync caches (READY=1), elect, reconcile until SIGTERM.
pub async fn run(cfg: CmConfig, common: &CommonArgs, log: LogHandle) -> anyhow::Result<()> {
    let settings = cfg.settings()?;
    let mut shutdown = signals::ShutdownSignals::new()?;
    let mut hup = signals::reload_signals()?;
    let state = DaemonState::new(env!("CARGO_PKG_VERSION"));
    state.set_status("connecting to the API server");
    state.on_reload(|| Box::pin(async { Ok(()) }));

    let client = match &cfg.kubeconfig {
        Some(p) => kelson_kube::client_from_kubeconfig(p).await?,
        None => kube::Client::try_default()
            .await
            .context("no --kubeconfig and no in-cluster/default config")?,
    };
    let ctx = controllers::Ctx {
        client: client.clone(),
        inf: controllers::Informers::new(&client),
        settings: Arc::new(settings),
        events: events::Recorder::start(client.clone(), kelson_kube::default_identity()),
    };
    let ctrls = controllers::build(&ctx, &cfg.controllers);
    let names: Vec<&str> = ctrls.iter().map(|c| c.name).collect();
    tracing::info!(controllers = ?names, "enabled controllers");

    let (lead_tx, lead_rx) = tokio::sync::watch::channel(false);
    let queues: Arc<Mutex<BTreeMap<&'static str, queue::WorkQueue>>> = Arc::default();
    for c in &ctrls {
        queues.lock().insert(c.name, c.queue.clone());
    }
    let _dbus = kelson_runtime::dbus::serve_optional(
        common,
        "ControllerManager",
        &state,
        &log,
        dbus::ControllerManager1 {
            leading: lead_rx.clone(),
            queues: queues.clone(),
        },
    )
    .await?;
    if let Some(addr) = common.metrics_addr {
        let registry = kelson_runtime::metrics::registry();
        registry
            .lock()
            .register_collector(Box::new(events::StatsCollector(ctx.events.stats())));
        let (bound, _) = kelson_runtime::metrics::serve(addr, registry)
            .await
            .context("serving metrics")?;
        tracing::info!(%bound, "serving /metrics");
    }

    state.set_status("syncing informer caches");
    let sync = async {
        for attempt in 0u32.. {
            if ctx.inf.start_and_sync(Duration::from_secs(10)).await {
                return;
            }
            tracing::warn!(
                attempt,
                "informer caches not synced yet; is the API server reachable?"
            );
        }
    };
    tokio::select! {
        _ = sync => {}
        sig = shutdown.recv() => {
            tracing::info!(signal = sig.name(), "stopping before ready");
            state.set_state(Lifecycle::Stopping);
            return Ok(());
        }
    }
    state.set_state(Lifecycle::Running);
    let _watchdog = state.spawn_watchdog();

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let election = if cfg.leader_elect {
        let mut le = LeaderElectionConfig::new(
            &cfg.leader_elect_resource_namespace,
            &cfg.leader_elect_resource_name,
            &kelson_kube::default_identity(),
        );
        le.lease_duration = dur(
            "leader-elect-lease-duration",
            &cfg.leader_elect_lease_duration,
        )?;
        le.renew_deadline = dur(
            "leader-elect-renew-deadline",
            &cfg.leader_elect_renew_deadline,
        )?;
        le.retry_period = dur("leader-elect-retry-period", &cfg.leader_elect_retry_period)?;
        state.set_status(format!("waiting for leadership ({})", le.identity));
        let api: kube::Api<Lease> =
            kube::Api::namespaced(client.clone(), &cfg.leader_elect_resource_namespace);
        Some(tokio::spawn(kelson_kube::run_leader_election(
            api,
            le,
            lead_tx.clone(),
            stop_rx.clone(),
        )))
    } else {
        let _ = lead_tx.send(true);
        None
    };

    let mut lead = lead_rx.clone();
    let mut tasks = Vec::new();
    let mut led = false;
    let result = loop {
        let leading = *lead.borrow_and_update();
        if leading && !led {
            led = true;
            tracing::info!("leading: starting controllers");
            state.set_status(format!("leading; {} controllers running", ctrls.len()));
            for c in &ctrls {
                tasks.extend(c.spawn(queues.clone()));
            }
        } else if !leading && led {
            state.set_health(false);
            break Err(anyhow::anyhow!("leader election lost"));
        }
        tokio::select! {
            sig = shutdown.recv() => {
                tracing::info!(signal = sig.name(), "stopping");
                break Ok(());
            }
            Some(()) = hup.recv() => { let _ = state.reload().await; }
            r = lead.changed() => {
                if r.is_err() {
                    break Ok(());
                }
            }
        }
    };
    state.set_state(Lifecycle::Stopping);
    for c in &ctrls {
        c.queue.shutdown();
    }
    let _ = stop_tx.send(true);
    if let Some(e) = election {
        // Releasing the lease lets a standby take over at once.
        let _ = tokio::time::timeout(Duration::from_secs(5), e).await;
    }
    for t in tasks {
        t.abort();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_upstreams() {
        let c = CmConfig::default();
        let s = c.settings().unwrap();
        assert_eq!(s.node_monitor_grace_period, Duration::from_secs(50));
        assert_eq!(c.leader_elect_resource_name, "kube-controller-manager");
        let bad = CmConfig {
            controllers: vec!["*".into(), "-nope".into()],
            ..Default::default()
        };
        assert!(bad.settings().is_err());
        let bad = CmConfig {
            node_monitor_grace_period: "5q".into(),
            ..Default::default()
        };
        assert!(bad.settings().is_err());
    }
}
