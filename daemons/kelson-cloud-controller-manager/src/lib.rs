//! kelson-cloud-controller-manager: the cloud provider for machines without a cloud.
//!
//! Layout: [`config`] (flags, TOML inventory, pools, VIP), [`pools`] (address pools and the
//! allocator), [`election`] (which node announces an address), [`nodes`] (node controller),
//! [`services`] (service controller), [`controller`] (informers, speaker liveness, the
//! leader-only reconcile loop), [`announce`] (adding addresses and sending gratuitous ARP /
//! unsolicited NA, optionally inside a named network namespace), [`speaker`] (per-node speaker
//! and the VIP holder), [`events`], [`informer`], [`dbus`].
//!
//! One binary, two modes. `--mode controller` runs cluster-wide under Lease leader election
//! (`kube-system/cloud-controller-manager`, as upstream): the node controller initializes nodes
//! from the inventory and the service controller allocates LoadBalancer addresses and picks
//! the announcing node per address. `--mode speaker` runs on every node and holds the
//! addresses assigned to it — MetalLB's L2 mode, built in. Either mode can also hold the
//! control-plane VIP (`[vip]`). [`run`] wires them with the shared daemon runtime: D-Bus
//! `io.kelson.CloudControllerManager1`, /metrics, `READY=1` once the caches are synced.

pub mod announce;
pub mod config;
pub mod controller;
pub mod dbus;
pub mod election;
pub mod events;
pub mod informer;
pub mod nodes;
pub mod pools;
pub mod services;
pub mod speaker;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::coordination::v1::Lease;
use kelson_kube::{run_leader_election, LeaderElectionConfig};
use kelson_runtime::config::CommonArgs;
use kelson_runtime::dbus::{DaemonState, Lifecycle};
use kelson_runtime::logging::LogHandle;
use kelson_runtime::signals;
use kube::Api;
use parking_lot::Mutex;
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::sync::watch;

pub use config::{CcmConfig, CcmFlags, Mode};

/// What the controllers publish for D-Bus, metrics and the status line.
#[derive(Debug, Default)]
pub struct Shared {
    pub is_leader: AtomicBool,
    pub synced: AtomicBool,
    pub holds_vip: AtomicBool,
    pub allocations: Mutex<BTreeMap<IpAddr, String>>,
    pub usage: Mutex<Vec<(String, u64, u64)>>,
    pub announced: Mutex<Vec<IpAddr>>,
}

/// Prometheus collector over [`Shared`] (read at scrape time).
#[derive(Debug)]
struct CcmCollector(Arc<Shared>);

impl prometheus_client::collector::Collector for CcmCollector {
    fn encode(
        &self,
        mut enc: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        let s = &self.0;
        for (name, help, v) in [
            (
                "ccm_is_leader",
                "1 while this instance runs the controllers",
                s.is_leader.load(Ordering::Relaxed) as i64,
            ),
            (
                "ccm_holds_vip",
                "1 while this instance holds the control-plane VIP",
                s.holds_vip.load(Ordering::Relaxed) as i64,
            ),
            (
                "ccm_announced_addresses",
                "Addresses this speaker holds and announces",
                s.announced.lock().len() as i64,
            ),
        ] {
            let g = ConstGauge::new(v);
            g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        let usage = s.usage.lock().clone();
        for (metric, help, idx) in [
            (
                "ccm_pool_addresses_in_use",
                "Allocated LoadBalancer addresses per pool",
                0usize,
            ),
            (
                "ccm_pool_addresses_total",
                "Size of each LoadBalancer address pool",
                1,
            ),
        ] {
            let mut fam = enc.encode_descriptor(
                metric,
                help,
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for (pool, used, size) in &usage {
                let v = if idx == 0 { *used } else { *size };
                let labels = [("pool", pool.as_str())];
                let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
                let enc2 = fam.encode_family(&labels)?;
                g.encode(enc2)?;
            }
        }
        Ok(())
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// The whole daemon: connect, serve D-Bus and metrics, run the mode's tasks until SIGTERM.
pub async fn run(cfg: CcmConfig, common: &CommonArgs, log: LogHandle) -> anyhow::Result<()> {
    cfg.validate().context("invalid configuration")?;
    let (lease, renew, retry) = cfg.leader_timings()?;
    let speaker_lease = cfg.speaker_lease()?;
    let mut signals = signals::ShutdownSignals::new()?;
    let mut hup = signals::reload_signals()?;
    let state = DaemonState::new(env!("CARGO_PKG_VERSION"));
    // Reload (SIGHUP / D-Bus Reload()) re-reads the pools and the inventory from the config
    // file; both are TOML-only, so no command-line flag can override what is re-read. Other
    // keys need a restart. A file that does not validate leaves the running settings alone.
    let (reload_tx, reload_rx) = watch::channel((cfg.build_pools()?, cfg.nodes.clone()));
    let reload_tx = Arc::new(reload_tx);
    let config_path = common.config.clone();
    state.on_reload(move || {
        let tx = reload_tx.clone();
        let path = config_path.clone();
        Box::pin(async move {
            let Some(path) = path else {
                return Ok(()); // no file: nothing to re-read
            };
            let new: CcmConfig = kelson_runtime::config::load(Some(&path), Default::default())
                .map_err(|e| e.to_string())?;
            let pools = new.build_pools().map_err(|e| e.to_string())?;
            tracing::info!(
                pools = pools.len(),
                nodes = new.nodes.len(),
                "configuration re-read"
            );
            tx.send_replace((pools, new.nodes));
            Ok(())
        })
    });
    state.set_status("connecting to the API server");
    let shared = Arc::new(Shared::default());
    let mode = match cfg.mode {
        Mode::Controller => "controller",
        Mode::Speaker => "speaker",
    };

    let _dbus = kelson_runtime::dbus::serve_optional(
        common,
        "CloudControllerManager",
        &state,
        &log,
        dbus::CloudControllerManager1 {
            shared: shared.clone(),
            mode: mode.into(),
        },
    )
    .await?;
    if let Some(addr) = common.metrics_addr {
        let registry = kelson_runtime::metrics::registry();
        registry
            .lock()
            .register_collector(Box::new(CcmCollector(shared.clone())));
        let (bound, _) = kelson_runtime::metrics::serve(addr, registry)
            .await
            .context("serving metrics")?;
        tracing::info!(%bound, "serving /metrics");
    }

    let client = match &cfg.kubeconfig {
        Some(p) => kelson_kube::client_from_kubeconfig(p).await?,
        None => kube::Client::try_default()
            .await
            .context("no --kubeconfig and no in-cluster/default kubeconfig")?,
    };
    let identity = kelson_kube::default_identity();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut tasks: Vec<(&str, tokio::task::JoinHandle<anyhow::Result<()>>)> = Vec::new();
    let mut election = None;

    match cfg.mode {
        Mode::Controller => {
            let (leading_tx, leading_rx) = watch::channel(!cfg.leader_elect);
            if cfg.leader_elect {
                let mut le = LeaderElectionConfig::new(
                    &cfg.leader_elect_resource_namespace,
                    &cfg.leader_elect_resource_name,
                    &identity,
                );
                le.lease_duration = lease;
                le.renew_deadline = renew;
                le.retry_period = retry;
                let api: Api<Lease> =
                    Api::namespaced(client.clone(), &cfg.leader_elect_resource_namespace);
                election = Some(tokio::spawn(run_leader_election(
                    api,
                    le,
                    leading_tx,
                    shutdown_rx.clone(),
                )));
            } else {
                drop(leading_tx);
            }
            tasks.push((
                "controller",
                tokio::spawn(controller::run(
                    client.clone(),
                    cfg.clone(),
                    shared.clone(),
                    leading_rx,
                    reload_rx.clone(),
                    shutdown_rx.clone(),
                )),
            ));
        }
        Mode::Speaker => {
            let node = cfg.node_name.clone().unwrap_or_else(hostname);
            let iface = cfg.interface.clone().unwrap_or_default();
            let ann = announce::Announcer::start(cfg.netns.as_deref(), &iface)
                .with_context(|| format!("preparing to announce on {iface}"))?;
            tasks.push((
                "speaker",
                tokio::spawn(speaker::run_speaker(
                    client.clone(),
                    node,
                    cfg.speaker_namespace.clone(),
                    speaker_lease,
                    ann,
                    shared.clone(),
                    shutdown_rx.clone(),
                )),
            ));
        }
    }
    if let Some(vip) = &cfg.vip {
        let ann = announce::Announcer::start(cfg.netns.as_deref(), &vip.interface)
            .with_context(|| format!("preparing to hold the VIP on {}", vip.interface))?;
        let mut le = LeaderElectionConfig::new(
            &cfg.leader_elect_resource_namespace,
            &vip.lease_name,
            &identity,
        );
        // Same failover time as LoadBalancer addresses: the speaker lease duration.
        le.lease_duration = speaker_lease;
        le.renew_deadline = speaker_lease * 2 / 3;
        le.retry_period = (speaker_lease / 6).max(Duration::from_millis(200));
        tasks.push((
            "vip",
            tokio::spawn(speaker::run_vip(
                client.clone(),
                vip.address,
                le,
                ann,
                shared.clone(),
                shutdown_rx.clone(),
            )),
        ));
    }

    let mut ready = false;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut result = Ok(());
    {
        let first_done = async {
            loop {
                for (name, t) in &tasks {
                    if t.is_finished() {
                        return *name;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::pin!(first_done);
        loop {
            tokio::select! {
                Some(()) = hup.recv() => {
                if let Err(e) = state.reload().await {
                    tracing::warn!(error = %e, "reload failed; keeping the running configuration");
                }
            }
            sig = signals.recv() => {
                    tracing::info!(signal = sig.name(), "stopping");
                    break;
                }
                name = &mut first_done => {
                    result = Err(anyhow::anyhow!("{name} task ended unexpectedly"));
                    break;
                }
                _ = tick.tick() => {
                    if shared.synced.load(Ordering::Relaxed) && !ready {
                        ready = true;
                        state.set_state(Lifecycle::Running);
                        let _ = state.spawn_watchdog();
                        tracing::info!(%identity, mode, "caches synced; ready");
                    }
                    if ready {
                        let status = match cfg.mode {
                            Mode::Controller => format!(
                                "{}; {} load balancer addresses allocated",
                                if shared.is_leader.load(Ordering::Relaxed) { "leading" } else { "standby" },
                                shared.allocations.lock().len()
                            ),
                            Mode::Speaker => format!("announcing {} addresses", shared.announced.lock().len()),
                        };
                        state.set_status(status);
                    }
                }
            }
        }
    }
    state.set_state(Lifecycle::Stopping);
    let _ = shutdown_tx.send(true);
    // Speakers release their addresses and Leases; bounded so a hung API call cannot stall stop.
    for (name, t) in tasks {
        match tokio::time::timeout(Duration::from_secs(8), t).await {
            Ok(Ok(Err(e))) if result.is_ok() => result = Err(e.context(format!("{name} task"))),
            Ok(Err(e)) if result.is_ok() => {
                result = Err(anyhow::anyhow!("{name} task failed: {e}"))
            }
            Err(_) => tracing::warn!(task = name, "did not stop in time"),
            _ => {}
        }
    }
    if let Some(e) = election {
        let _ = tokio::time::timeout(Duration::from_secs(5), e).await;
    }
    result
}
