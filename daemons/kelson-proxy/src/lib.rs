//! kelson-proxy: Service virtual IPs on a node (what kube-proxy does).
//!
//! Layout: [`model`] (Services + EndpointSlices → one `ServiceInfo` per service port, pure),
//! [`nft`] (nftables rule generation, pure, `nft -f -`, and the netlink batches of incremental
//! syncs), [`proxier`] (incremental nftables syncs with a per-service render cache), [`userspace`] (the tokio fallback proxy), [`dbus`]
//! (`io.kelson.Proxy1`), [`config`].
//!
//! [`run`] wires them with the shared daemon runtime: the mode is chosen once at start
//! (forced by `mode`/`--proxy-mode`, else nftables when `nft list tables` works, else
//! userspace with a warning); two reflectors (Services, EndpointSlices) poke a `Notify` on
//! every event; one loop syncs at most every `min-sync-period`, rebuilding the desired state
//! from the reflector stores and applying only the difference, with a full resync every
//! `sync-period` and after a failed sync. `READY=1` follows the first successful sync. On exit
//! nftables rules stay in place (as upstream: traffic keeps flowing across a restart); the
//! userspace mode's listeners die with the process and its dummy interface is removed.

pub mod config;
pub mod dbus;
pub mod model;
pub mod nft;
pub mod proxier;
pub mod userspace;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kelson_runtime::config::CommonArgs;
use kelson_runtime::dbus::{DaemonState, Lifecycle};
use kelson_runtime::logging::LogHandle;
use kelson_runtime::signals;
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::Api;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use tokio::sync::{watch, Notify};

pub use config::{Mode, ProxyConfig, ProxyFlags};

/// State shared between the sync loop, D-Bus and metrics.
#[derive(Debug)]
pub struct Shared {
    pub mode: Mutex<String>,
    pub service_count: AtomicUsize,
    pub rule_count: AtomicUsize,
    /// f64 bits of the last sync's duration in seconds.
    pub last_sync_secs: AtomicU64,
    pub sync_requested: Notify,
    /// Completed syncs (successful or not), for `Sync()` to wait on.
    pub syncs_done: watch::Sender<u64>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            mode: Mutex::new(String::new()),
            service_count: AtomicUsize::new(0),
            rule_count: AtomicUsize::new(0),
            last_sync_secs: AtomicU64::new(0f64.to_bits()),
            sync_requested: Notify::new(),
            syncs_done: watch::channel(0).0,
        }
    }
}

enum Backend {
    Nft(proxier::NftProxier),
    User(userspace::Userspace),
}

fn node_name(cfg: &ProxyConfig) -> String {
    cfg.hostname_override.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_lowercase())
            .unwrap_or_default()
    })
}

/// Starts a reflector for `K` that notifies `changed` on every event; returns its store.
fn reflect<K>(api: Api<K>, changed: Arc<Notify>) -> reflector::Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let stream =
        reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(_) => changed.notify_one(),
                Err(e) => tracing::warn!(error = %e, "watch error"),
            }
        }
    });
    store
}

/// The whole daemon: choose the mode, watch, sync until SIGTERM.
pub async fn run(cfg: ProxyConfig, common: &CommonArgs, log: LogHandle) -> anyhow::Result<()> {
    cfg.validate().context("invalid configuration")?;
    let min_sync = config::parse_duration(&cfg.min_sync_period)?;
    let full_every = config::parse_duration(&cfg.sync_period)?;
    let port_range = cfg.node_port_range()?;
    let mut signals = signals::ShutdownSignals::new()?;
    let state = DaemonState::new(env!("CARGO_PKG_VERSION"));
    // `systemctl reload` (SIGHUP) must not terminate the daemon.
    let _hup = signals::reload_on_sighup(&state)?;
    state.set_status("starting");
    let shared = Arc::new(Shared::default());

    let nft = nft::Nft::new(&cfg.nft_path);
    let mode = match cfg.forced_mode()? {
        Some(Mode::Nftables) => {
            nft.probe()
                .await
                .context("mode \"nftables\" was requested but nftables is unusable")?;
            Mode::Nftables
        }
        Some(Mode::Userspace) => Mode::Userspace,
        None => match nft.probe().await {
            Ok(()) => Mode::Nftables,
            Err(e) => {
                tracing::warn!(error = %e, "nftables is unavailable; falling back to the userspace proxy");
                Mode::Userspace
            }
        },
    };
    *shared.mode.lock() = mode.as_str().to_string();
    tracing::info!(mode = mode.as_str(), "proxy mode");

    let _dbus = kelson_runtime::dbus::serve_optional(
        common,
        "Proxy",
        &state,
        &log,
        dbus::Proxy1 {
            shared: shared.clone(),
        },
    )
    .await?;
    let sync_hist = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
    let sync_failures: Counter = Counter::default();
    {
        let (h, f) = (sync_hist.clone(), sync_failures.clone());
        kelson_runtime::metrics::serve_optional(common.metrics_addr, move |reg| {
            reg.register(
                "kubeproxy_sync_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds",
                h,
            );
            reg.register(
                "kubeproxy_sync_proxy_rules_failures",
                "Syncs that failed to apply",
                f,
            );
        })
        .await
        .context("serving metrics")?;
    }

    let client = match &cfg.kubeconfig {
        Some(p) => kelson_kube::client_from_kubeconfig(p).await?,
        None => kube::Client::try_default()
            .await
            .context("no --kubeconfig and no in-cluster/default kubeconfig")?,
    };
    let node = node_name(&cfg);
    tracing::info!(%node, "watching services and endpoint slices");
    let changed = Arc::new(Notify::new());
    let services = reflect(Api::<Service>::all(client.clone()), changed.clone());
    let slices = reflect(Api::<EndpointSlice>::all(client), changed.clone());

    let mut backend = match mode {
        Mode::Nftables => {
            let mut p = proxier::NftProxier::new(
                nft,
                &cfg.cluster_cidr,
                cfg.masquerade_all,
                &cfg.nodeport_addresses,
            );
            p.set_netlink(cfg.nft_incremental_netlink);
            Backend::Nft(p)
        }
        Mode::Userspace => Backend::User(
            userspace::Userspace::new(&cfg.userspace_interface, &cfg.nodeport_addresses)
                .await
                .context("setting up the userspace proxy")?,
        ),
    };

    state.set_status("waiting for the service and endpoint slice caches");
    let synced = async {
        services.wait_until_ready().await?;
        slices.wait_until_ready().await
    };
    tokio::select! {
        r = synced => r.context("reflector stopped")?,
        sig = signals.recv() => {
            tracing::info!(signal = sig.name(), "stopping before the first sync");
            return Ok(());
        }
    }

    let mut ready = false;
    let mut full_due = Instant::now() + full_every;
    let mut need_full = true;
    let mut retry_at: Option<Instant> = None;
    let mut last_sync: Option<Instant> = None;
    let result = loop {
        // Sync now (first pass), then wait for a change, a request, the full resync or a retry.
        if last_sync.is_some() {
            let retry = async {
                match retry_at {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                sig = signals.recv() => {
                    tracing::info!(signal = sig.name(), "stopping");
                    break Ok(());
                }
                _ = changed.notified() => {}
                _ = shared.sync_requested.notified() => {}
                _ = retry => {}
                _ = tokio::time::sleep_until(full_due.into()) => need_full = true,
            }
            // Batch bursts of events: at most one sync per min-sync-period.
            if let Some(l) = last_sync {
                let wait = (l + min_sync).saturating_duration_since(Instant::now());
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
            }
        }
        let started = Instant::now();
        last_sync = Some(started);
        let svcs = services.state();
        let eps = slices.state();
        let desired = model::build(&svcs, &eps, &node, port_range);
        let outcome: anyhow::Result<usize> = match &mut backend {
            Backend::Nft(p) => p
                .sync(&desired, need_full)
                .await
                .map(|s| {
                    tracing::debug!(
                        full = s.full,
                        netlink = s.netlink,
                        nft_fallbacks = s.nft_fallbacks,
                        apply = ?s.apply,
                        "nftables transaction"
                    );
                    s.rules
                })
                .map_err(Into::into),
            Backend::User(u) => u
                .sync(&desired)
                .await
                .map(|()| u.listener_count())
                .map_err(Into::into),
        };
        let took = started.elapsed();
        sync_hist.observe(took.as_secs_f64());
        shared
            .last_sync_secs
            .store(took.as_secs_f64().to_bits(), Ordering::Relaxed);
        match outcome {
            Ok(rules) => {
                if need_full {
                    full_due = Instant::now() + full_every;
                }
                need_full = false;
                retry_at = None;
                shared.service_count.store(desired.len(), Ordering::Relaxed);
                shared.rule_count.store(rules, Ordering::Relaxed);
                tracing::debug!(services = desired.len(), rules, ?took, "synced");
                if !ready {
                    ready = true;
                    state.set_state(Lifecycle::Running);
                    let _ = state.spawn_watchdog();
                    tracing::info!(
                        services = desired.len(),
                        rules,
                        ?took,
                        "first sync done; ready"
                    );
                }
                state.set_status(format!(
                    "{} mode; {} service ports, {} rules; last sync {:.1} ms",
                    mode.as_str(),
                    desired.len(),
                    rules,
                    took.as_secs_f64() * 1000.0
                ));
            }
            Err(e) => {
                sync_failures.inc();
                tracing::error!(
                    error = format!("{e:#}"),
                    "sync failed; retrying with a full sync in 1 s"
                );
                need_full = true;
                retry_at = Some(Instant::now() + Duration::from_secs(1));
            }
        }
        shared.syncs_done.send_modify(|n| *n += 1);
    };
    state.set_state(Lifecycle::Stopping);
    if let Backend::User(u) = backend {
        u.shutdown().await;
    }
    result
}
