//! kelson-dns: node-local cluster DNS, in the place of CoreDNS with its `kubernetes`, `cache`
//! and `forward` plugins.
//!
//! Layout: [`zone`] (records from Services and EndpointSlices, an immutable snapshot),
//! [`forward`] (upstream exchange and the TTL-respecting bounded cache), [`server`] (the
//! hickory-server request handler and listeners), [`metrics`] (CoreDNS-named Prometheus
//! metrics), [`dbus`] (`io.kelson.DNS1`), [`config`], and [`stub`] (a tiny upstream for tests
//! and the benchmark).
//!
//! Data flow: two kube-runtime reflectors (Services, EndpointSlices) keep stores current; every
//! watch event wakes one rebuild task, which recomputes the [`zone::Zone`] from both stores and
//! swaps it in whole. Wake-ups coalesce (a `Notify` holds at most one permit), so a burst of
//! events costs one or two rebuilds, and a change is visible within one rebuild of its event —
//! milliseconds for thousands of services. Queries take the current snapshot (`Arc` clone under
//! a read lock) and never wait for a rebuild.
//!
//! [`run`] wires them with the shared daemon runtime: D-Bus, /metrics, `READY=1` once the
//! listeners are bound. Listeners start after the caches synced or after 5 s, whichever comes
//! first (as CoreDNS), so forwarding works while the API server is unreachable; until synced,
//! cluster names answer SERVFAIL rather than a wrong, cacheable NXDOMAIN.

pub mod config;
pub mod dbus;
pub mod forward;
pub mod metrics;
pub mod server;
pub mod stub;
pub mod zone;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kelson_runtime::config::CommonArgs;
use kelson_runtime::dbus::{DaemonState, Lifecycle};
use kelson_runtime::logging::LogHandle;
use kelson_runtime::signals;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use parking_lot::RwLock;
use tokio::sync::Notify;

pub use config::{DnsConfig, DnsFlags};
use forward::{Forwarder, ForwarderOptions};
use zone::Zone;

/// How long to wait for the first sync before serving anyway (CoreDNS waits 5 s too).
const SYNC_GRACE: Duration = Duration::from_secs(5);

/// The state every listener shares.
#[derive(Debug)]
pub struct Dns {
    zone: RwLock<Arc<Zone>>,
    pub forwarder: Forwarder,
    pub metrics: metrics::Metrics,
    pub requests_total: AtomicU64,
}

impl Dns {
    pub fn new(zone: Zone, forwarder: Forwarder) -> Dns {
        Dns {
            zone: RwLock::new(Arc::new(zone)),
            forwarder,
            metrics: metrics::Metrics::default(),
            requests_total: AtomicU64::new(0),
        }
    }

    /// The current snapshot.
    pub fn zone(&self) -> Arc<Zone> {
        self.zone.read().clone()
    }

    pub fn set_zone(&self, zone: Zone) {
        *self.zone.write() = Arc::new(zone);
    }
}

/// Rebuilds the zone from the stores whenever `changed` fires.
async fn rebuild_loop(
    dns: Arc<Dns>,
    domain: String,
    ttl: u32,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    changed: Arc<Notify>,
) {
    // Wait for both initial lists so the first snapshot is complete.
    let _ = services.wait_until_ready().await;
    let _ = slices.wait_until_ready().await;
    loop {
        let svcs = services.state();
        let eps = slices.state();
        let svc_refs: Vec<&Service> = svcs.iter().map(|s| s.as_ref()).collect();
        let ep_refs: Vec<&EndpointSlice> = eps.iter().map(|s| s.as_ref()).collect();
        let started = std::time::Instant::now();
        let z = Zone::build(&domain, ttl, &svc_refs, &ep_refs, true);
        tracing::debug!(
            services = svcs.len(),
            slices = eps.len(),
            records = z.record_count(),
            took = ?started.elapsed(),
            "zone rebuilt"
        );
        dns.set_zone(z);
        changed.notified().await;
    }
}

/// Runs a reflector for `K`, waking `changed` on every event.
fn reflect<K>(api: Api<K>, changed: Arc<Notify>) -> (Store<K>, tokio::task::JoinHandle<()>)
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
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).default_backoff(),
    );
    let task = tokio::spawn(async move {
        let mut s = stream.boxed();
        while let Some(ev) = s.next().await {
            match ev {
                Ok(_) => changed.notify_one(),
                Err(e) => tracing::warn!(error = %e, "watch error (retrying with back-off)"),
            }
        }
    });
    (store, task)
}

/// The whole daemon: watch, serve DNS, D-Bus and metrics until SIGTERM.
pub async fn run(cfg: DnsConfig, common: &CommonArgs, log: LogHandle) -> anyhow::Result<()> {
    cfg.validate().context("invalid configuration")?;
    let domain = cfg.domain()?;
    let upstreams = cfg.upstreams()?;
    let mut signals = signals::ShutdownSignals::new()?;
    let state = DaemonState::new(env!("CARGO_PKG_VERSION"));
    // `systemctl reload` (SIGHUP) must not terminate the daemon.
    let _hup = signals::reload_on_sighup(&state)?;
    state.set_status("connecting to the API server");

    let forwarder = Forwarder::new(ForwarderOptions {
        upstreams: upstreams.clone(),
        timeout: cfg.upstream_timeout(),
        cache_size: cfg.cache_size,
        max_ttl: cfg.cache_max_ttl,
        max_negative_ttl: cfg.cache_max_negative_ttl,
    });
    let dns = Arc::new(Dns::new(Zone::empty(&domain, cfg.ttl), forwarder));

    let _dbus = kelson_runtime::dbus::serve_optional(
        common,
        "DNS",
        &state,
        &log,
        dbus::Dns1 { dns: dns.clone() },
    )
    .await?;
    kelson_runtime::metrics::serve_optional(common.metrics_addr, |reg| {
        dns.metrics.register(reg, dns.clone())
    })
    .await
    .context("serving metrics")?;

    let client = match &cfg.kubeconfig {
        Some(p) => kelson_kube::client_from_kubeconfig(p).await?,
        None => kube::Client::try_default()
            .await
            .context("no --kubeconfig and no in-cluster/default kubeconfig")?,
    };
    let changed = Arc::new(Notify::new());
    let (svc_store, svc_task) = reflect(Api::<Service>::all(client.clone()), changed.clone());
    let (eps_store, eps_task) = reflect(Api::<EndpointSlice>::all(client.clone()), changed.clone());
    let rebuild = tokio::spawn(rebuild_loop(
        dns.clone(),
        domain.clone(),
        cfg.ttl,
        svc_store,
        eps_store,
        changed,
    ));

    let synced = async {
        while !dns.zone().is_synced() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    if tokio::time::timeout(SYNC_GRACE, synced).await.is_err() {
        tracing::warn!("Services/EndpointSlices not synced after {SYNC_GRACE:?}; serving anyway (cluster names SERVFAIL until synced)");
    }
    let listeners = server::Listeners::bind(dns.clone(), &cfg.listen)
        .await
        .context("binding DNS listeners")?;
    tracing::info!(listen = ?listeners.addrs(), upstreams = ?upstreams, %domain, "serving DNS");
    state.set_state(Lifecycle::Running);
    let _ = state.spawn_watchdog();

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            sig = signals.recv() => {
                tracing::info!(signal = sig.name(), "stopping");
                break;
            }
            _ = tick.tick() => {
                let z = dns.zone();
                state.set_status(format!(
                    "{}; {} records; {} cached answers",
                    if z.is_synced() { "serving" } else { "serving (API not synced)" },
                    z.record_count(),
                    dns.forwarder.cache_len()
                ));
            }
        }
    }
    state.set_state(Lifecycle::Stopping);
    listeners.shutdown().await;
    rebuild.abort();
    svc_task.abort();
    eps_task.abort();
    Ok(())
}
