//! kelson-scheduler: a Kubernetes-compatible pod scheduler.
//!
//! Layout: [`resources`] (quantities, pod requests), [`selectors`] (label/node selectors),
//! [`nodeinfo`] (per-node aggregates and snapshots), [`plugins`] (filters and scores),
//! [`framework`] (one attempt: sampling, filtering, scoring, FitError, preemption),
//! [`queue`] (active / back-off / unschedulable), [`scheduler`] (informers, cache, assume and
//! bind, events and status), [`podwatch`] (pods decoded without managedFields), [`dbus`]
//! (`io.kelson.Scheduler1`), [`config`].
//!
//! [`run`] wires them with the shared daemon runtime: D-Bus, /metrics, `READY=1` once the API
//! server is reachable and the node and pod caches are synced, Lease leader election on
//! `kube-system/kube-scheduler` (only the leader schedules; losing the lease ends the process,
//! as upstream, so the service manager restarts it as a follower).

pub mod config;
pub mod dbus;
pub mod framework;
pub mod nodeinfo;
pub mod plugins;
pub mod podwatch;
pub mod queue;
pub mod resources;
pub mod scheduler;
pub mod selectors;

#[cfg(test)]
mod plugin_tests;

use std::sync::atomic::Ordering;
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
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::sync::watch;

pub use config::{SchedulerConfig, SchedulerFlags};
use scheduler::{Options, Scheduler, Shared};

/// Prometheus collector over the shared counters (read at scrape time).
#[derive(Debug)]
struct SchedCollector(Arc<Shared>);

impl prometheus_client::collector::Collector for SchedCollector {
    fn encode(
        &self,
        mut enc: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        let s = &self.0;
        let c = ConstCounter::new(s.scheduled_total.load(Ordering::Relaxed));
        c.encode(enc.encode_descriptor(
            "scheduler_schedule_attempts_scheduled",
            "Pods bound by this instance",
            None,
            c.metric_type(),
        )?)?;
        let c = ConstCounter::new(s.attempts_unschedulable.load(Ordering::Relaxed));
        c.encode(enc.encode_descriptor(
            "scheduler_schedule_attempts_unschedulable",
            "Attempts that found no feasible node",
            None,
            c.metric_type(),
        )?)?;
        let c = ConstCounter::new(s.attempts_error.load(Ordering::Relaxed));
        c.encode(enc.encode_descriptor(
            "scheduler_schedule_attempts_error",
            "Attempts that failed with an API error",
            None,
            c.metric_type(),
        )?)?;
        let l = *s.lengths.lock();
        for (name, v) in [
            ("scheduler_pending_pods_active", l.active),
            ("scheduler_pending_pods_backoff", l.backoff),
            ("scheduler_pending_pods_unschedulable", l.unschedulable),
        ] {
            let g = ConstGauge::new(v as i64);
            g.encode(enc.encode_descriptor(name, "Pods in this queue", None, g.metric_type())?)?;
        }
        let mut m = enc.encode_descriptor(
            "scheduler_scheduling_attempt_duration_seconds",
            "Scheduling attempt latency in seconds (algorithm and preemption; binding is asynchronous)",
            None,
            prometheus_client::metrics::MetricType::Histogram,
        )?;
        for (result, h) in [
            ("scheduled", &s.attempt_duration.scheduled),
            ("unschedulable", &s.attempt_duration.unschedulable),
        ] {
            h.encode(m.encode_family(&[("result", result)])?)?;
        }
        let c = ConstCounter::new(s.events_dropped.load(Ordering::Relaxed));
        c.encode(enc.encode_descriptor(
            "scheduler_events_dropped",
            "Events not recorded because the recorder's queue was full",
            None,
            c.metric_type(),
        )?)?;
        let g = ConstGauge::new(s.is_leader.load(Ordering::Relaxed) as i64);
        g.encode(enc.encode_descriptor(
            "scheduler_is_leader",
            "1 while this instance leads",
            None,
            g.metric_type(),
        )?)?;
        Ok(())
    }
}

/// The whole daemon: connect, serve D-Bus and metrics, elect, schedule until SIGTERM.
pub async fn run(cfg: SchedulerConfig, common: &CommonArgs, log: LogHandle) -> anyhow::Result<()> {
    cfg.validate().context("invalid configuration")?;
    let (lease, renew, retry) = cfg.leader_timings()?;
    let mut signals = signals::ShutdownSignals::new()?;
    let state = DaemonState::new(env!("CARGO_PKG_VERSION"));
    // `systemctl reload` (SIGHUP) must not terminate the daemon.
    let _hup = signals::reload_on_sighup(&state)?;
    state.set_status("connecting to the API server");
    let shared = Arc::new(Shared::default());

    let _dbus = kelson_runtime::dbus::serve_optional(
        common,
        "Scheduler",
        &state,
        &log,
        dbus::Scheduler1 {
            shared: shared.clone(),
        },
    )
    .await?;
    if let Some(addr) = common.metrics_addr {
        let registry = kelson_runtime::metrics::registry();
        registry
            .lock()
            .register_collector(Box::new(SchedCollector(shared.clone())));
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
    // Bindings, events and status patches (many small concurrent writes) share one
    // multiplexed HTTP/2 connection; watches and leader election keep the stock HTTP/1.1
    // client, so a watch backlog's flow control can never stall a binding.
    let writer = match &cfg.kubeconfig {
        Some(p) => {
            kelson_kube::client_from_kubeconfig_with(p, kelson_kube::Transport::Http2).await?
        }
        None => client.clone(),
    };
    let identity = kelson_kube::default_identity();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (leading_tx, leading_rx) = watch::channel(!cfg.leader_elect);
    let election = if cfg.leader_elect {
        let mut le = LeaderElectionConfig::new(
            &cfg.leader_elect_resource_namespace,
            &cfg.leader_elect_resource_name,
            &identity,
        );
        le.lease_duration = lease;
        le.renew_deadline = renew;
        le.retry_period = retry;
        let api: Api<Lease> = Api::namespaced(client.clone(), &cfg.leader_elect_resource_namespace);
        Some(tokio::spawn(run_leader_election(
            api,
            le,
            leading_tx,
            shutdown_rx.clone(),
        )))
    } else {
        drop(leading_tx);
        None
    };

    let opts = Options {
        profiles: cfg.profiles.clone(),
        percentage_of_nodes_to_score: cfg.percentage_of_nodes_to_score,
        initial_backoff: Duration::from_secs(cfg.pod_initial_backoff_seconds),
        max_backoff: Duration::from_secs(cfg.pod_max_backoff_seconds),
        component: "default-scheduler".into(),
        identity: identity.clone(),
    };
    let sched = Scheduler::new(client, opts, shared.clone()).with_writer(writer);
    let mut sched_task = tokio::spawn(sched.run(leading_rx, shutdown_rx.clone()));

    // READY=1 once caches are synced (the API server answered lists for nodes and pods).
    let mut ready = false;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let result = loop {
        tokio::select! {
            sig = signals.recv() => {
                tracing::info!(signal = sig.name(), "stopping");
                break Ok(());
            }
            r = &mut sched_task => {
                break match r {
                    Ok(r) => r,
                    Err(e) => Err(anyhow::anyhow!("scheduler task failed: {e}")),
                };
            }
            _ = tick.tick() => {
                let synced = shared.synced.load(Ordering::Relaxed);
                let leader = shared.is_leader.load(Ordering::Relaxed);
                if synced && !ready {
                    ready = true;
                    state.set_state(Lifecycle::Running);
                    let _ = state.spawn_watchdog();
                    tracing::info!(%identity, "caches synced; ready");
                }
                if ready {
                    state.set_status(format!(
                        "{}; scheduled {}",
                        if leader { "leading" } else { "standby" },
                        shared.scheduled_total.load(Ordering::Relaxed)
                    ));
                }
            }
        }
    };
    state.set_state(Lifecycle::Stopping);
    let _ = shutdown_tx.send(true);
    if let Some(e) = election {
        // Releases the Lease so a standby takes over at once.
        let _ = tokio::time::timeout(Duration::from_secs(5), e).await;
    }
    sched_task.abort();
    result
}

#[cfg(test)]
mod metrics_tests {
    use super::*;

    #[test]
    fn attempt_duration_histogram_is_exported_like_upstream() {
        let shared = Arc::new(Shared::default());
        shared.attempt_duration.scheduled.observe(0.0015);
        shared.attempt_duration.scheduled.observe(0.0015);
        shared.attempt_duration.unschedulable.observe(0.5);
        let mut reg = prometheus_client::registry::Registry::default();
        reg.register_collector(Box::new(SchedCollector(shared)));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        let line = |prefix: &str| {
            out.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix} in\n{out}"))
                .to_string()
        };
        assert!(out.contains("# TYPE scheduler_scheduling_attempt_duration_seconds histogram"));
        let sched = r#"{result="scheduled"}"#;
        assert_eq!(
            line(&format!(
                "scheduler_scheduling_attempt_duration_seconds_count{sched}"
            )),
            format!("scheduler_scheduling_attempt_duration_seconds_count{sched} 2")
        );
        // 1.5 ms falls in the 2 ms bucket, not the 1 ms one.
        assert!(line(
            r#"scheduler_scheduling_attempt_duration_seconds_bucket{le="0.001",result="scheduled"}"#
        )
        .ends_with(" 0"));
        assert!(line(
            r#"scheduler_scheduling_attempt_duration_seconds_bucket{le="0.002",result="scheduled"}"#
        )
        .ends_with(" 2"));
        assert!(line(
            r#"scheduler_scheduling_attempt_duration_seconds_count{result="unschedulable"}"#
        )
        .ends_with(" 1"));
    }
}
