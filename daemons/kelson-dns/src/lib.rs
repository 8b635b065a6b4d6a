//! kelson-dns: node-local cluster DNS, in the place of CoreDNS with its `kubernetes`, `cache`
//! and `forward` plugins.
//!
//! Layout: [`zone`] (records from Services and EndpointSlices, an immutable snapshot),
//! [`forward`] (upstream exchange and the TTL-respecting bounded cache), [`server`] (the
//! hickory-server request handler and listeners), [`metrics`] (CoreDNS-named Prometheus
//! metrics), [`dbus`] (`io.kelson.DNS1`), [`config`], and [`stub`] (a tiny upstream for tests
//! and the benchmark).
//!
//! Data flow: two kube-runtime watchers (Services, EndpointSlices) send their events to one
//! zone task, which applies each to a [`zone::ZoneState`] — recomputing only the records of the
//! Service the event concerns — and, once the queue is drained, publishes an immutable
//! [`zone::Zone`] snapshot (a copy of two maps of `Arc`s, no records copied). So a change costs
//! O(that Service), not O(cluster) as the full rebuild per change did (486 ms at 10k services
//! in debug), and a burst of events costs one publish. Queries take the current snapshot
//! (`Arc` clone under a read lock) and never wait for an update.
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
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use parking_lot::RwLock;

pub use config::{DnsConfig, DnsFlags};
use forward::{Forwarder, ForwarderOptions};
use zone::{Zone, ZoneState};

/// Longest a burst of events is applied before a snapshot is published.
const PUBLISH_EVERY: Duration = Duration::from_millis(100);

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

/// A watch event for the zone task.
enum ZoneEvent {
    Service(watcher::Event<Service>),
    Slice(watcher::Event<EndpointSlice>),
}

/// Applies watch events to the [`ZoneState`] and publishes a snapshot after each burst.
///
/// Events that are already queued are applied before publishing (for at most
/// [`PUBLISH_EVERY`]), so a burst (an initial list, a relist, a rollout) costs one snapshot. Nothing is published before both
/// initial lists are complete, so the first snapshot is never a partial zone.
async fn zone_loop(
    dns: Arc<Dns>,
    domain: String,
    ttl: u32,
    mut events: tokio::sync::mpsc::Receiver<ZoneEvent>,
) {
    let mut state = ZoneState::new(&domain, ttl);
    let (mut svc_synced, mut eps_synced) = (false, false);
    while let Some(first) = events.recv().await {
        let started = std::time::Instant::now();
        let mut next = Some(first);
        let mut applied = 0usize;
        while let Some(ev) = next {
            applied += 1;
            match ev {
                ZoneEvent::Service(e) => match e {
                    watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
                        state.apply_service(o)
                    }
                    watcher::Event::Delete(o) => state.delete_service(&o),
                    watcher::Event::Init => state.services_relist_begin(),
                    watcher::Event::InitDone => {
                        state.services_relist_end();
                        svc_synced = true;
                    }
                },
                ZoneEvent::Slice(e) => match e {
                    watcher::Event::Apply(o) | watcher::Event::InitApply(o) => state.apply_slice(o),
                    watcher::Event::Delete(o) => state.delete_slice(&o),
                    watcher::Event::Init => state.slices_relist_begin(),
                    watcher::Event::InitDone => {
                        state.slices_relist_end();
                        eps_synced = true;
                    }
                },
            }
            // Publish at least every 100 ms even under a steady flood of events.
            next = if started.elapsed() < PUBLISH_EVERY {
                events.try_recv().ok()
            } else {
                None
            };
        }
        if svc_synced && eps_synced {
            dns.set_zone(state.snapshot(true));
            tracing::debug!(
                events = applied,
                records = state.record_count(),
                took = ?started.elapsed(),
                "zone updated"
            );
        }
    }
}

/// Watches `K` and forwards every event to the zone task.
fn watch<K>(
    api: Api<K>,
    tx: tokio::sync::mpsc::Sender<ZoneEvent>,
    wrap: fn(watcher::Event<K>) -> ZoneEvent,
) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    tokio::spawn(async move {
        let mut s = stream.boxed();
        while let Some(ev) = s.next().await {
            match ev {
                Ok(e) => {
                    if tx.send(wrap(e)).await.is_err() {
                        return;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "watch error (retrying with back-off)"),
            }
        }
    })
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
    // Bounded: a slow zone task slows the watches down instead of buffering without limit.
    let (tx, rx) = tokio::sync::mpsc::channel(4096);
    let svc_task = watch(
        Api::<Service>::all(client.clone()),
        tx.clone(),
        ZoneEvent::Service,
    );
    let eps_task = watch(
        Api::<EndpointSlice>::all(client.clone()),
        tx,
        ZoneEvent::Slice,
    );
    let rebuild = tokio::spawn(zone_loop(dns.clone(), domain.clone(), cfg.ttl, rx));

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
