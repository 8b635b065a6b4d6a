//! kelson-apiserver: the Kubernetes-compatible API server.
//!
//! Serves the Kubernetes REST API (what kubectl 1.32 and client libraries speak) over HTTPS,
//! storing objects in any etcd v3 store (kelson-kv or etcd). Layers, outermost first:
//! [`server`] (TLS, HTTP/1.1 + HTTP/2, authentication, authorization, routing),
//! [`handlers`] (generic REST verbs for every resource in [`registry`]), [`strategy`]
//! (per-kind defaulting and validation), [`admission`] (mutating and validating admission),
//! and `kelson_apistorage` (Kubernetes storage semantics over etcd). Errors are
//! `kelson_apimachinery::ApiError` throughout.
//! [`run`] is the daemon: kelson-runtime config, logging, D-Bus `io.kelson.APIServer1`,
//! `/metrics`, `READY=1` once the store answers and the default namespaces exist.

pub mod admission;
pub mod alloc;
pub mod alloc_repair;
pub mod apply;
pub mod audit;
pub mod auth;
pub mod config;
pub mod crd;
pub mod dbus;
pub mod events;
pub mod eviction;
pub mod fieldval;
pub mod handlers;
pub mod http;
pub mod limitranger;
pub mod meta;
pub mod node_authz;
pub mod nodeproxy;
pub mod openapi_v2_proto;
pub mod patch;
pub mod podsecurity;
pub mod protobuf;
pub mod quota_admission;
#[rustfmt::skip]
#[allow(clippy::all)]
mod proto_schema;
pub mod registry;
pub mod reqctx;
pub mod reviews;
pub mod router;
pub mod server;
pub mod strategy;
pub mod table;
pub mod tokens;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kelson_apimachinery::ApiError;
use kelson_runtime::config::CommonArgs;
use kelson_runtime::dbus::{DaemonState, Lifecycle};
use kelson_runtime::logging::LogHandle;
use kelson_runtime::signals;
use serde_json::json;

pub use config::{ApiServerConfig, ApiServerFlags};

/// Namespaces every cluster has.
pub const DEFAULT_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// Storage tunables: watch bookmarks every few seconds (clients resume watches from them
/// after a disconnect instead of relisting), the rest as kelson-apistorage's defaults.
fn storage_config() -> kelson_apistorage::StorageConfig {
    kelson_apistorage::StorageConfig {
        bookmark_interval: Duration::from_secs(2),
        ..kelson_apistorage::StorageConfig::default()
    }
}

/// Builds the shared state (connects the store lazily: etcd-client dials on first use).
pub async fn build(
    cfg: &ApiServerConfig,
    server_address: String,
) -> anyhow::Result<Arc<server::Api>> {
    cfg.validate()?;
    let tls = cfg
        .etcd_cafile
        .as_ref()
        .map(|ca| kelson_apistorage::EtcdTls {
            ca: ca.clone(),
            cert: cfg.etcd_certfile.clone(),
            key: cfg.etcd_keyfile.clone(),
        });
    let endpoints = cfg.etcd_servers();
    let mut storage_cfg = storage_config();
    if let Some(path) = &cfg.encryption_provider_config {
        storage_cfg.encryption = Some(Arc::new(
            kelson_apistorage::encryption::Encryption::load(path, &cfg.etcd_prefix)
                .context("--encryption-provider-config")?,
        ));
    }
    let store = tokio::time::timeout(
        Duration::from_secs(30),
        kelson_apistorage::Storage::connect_with(&endpoints, tls, storage_cfg),
    )
    .await
    .context("connecting to the store timed out")?
    .context("connecting to the store")?;
    let mut modes: Vec<Arc<dyn auth::Authorizer>> = Vec::new();
    for mode in cfg.authz_modes()? {
        modes.push(match mode {
            config::AuthzMode::AlwaysAllow => Arc::new(auth::AlwaysAllow),
            config::AuthzMode::Rbac => Arc::new(auth::Rbac::new()),
            config::AuthzMode::Node => Arc::new(node_authz::NodeAuthorizer::new()),
        });
    }
    let authz: Arc<dyn auth::Authorizer> = match modes.len() {
        1 => modes.remove(0),
        _ => Arc::new(auth::Union(modes)),
    };
    let caches = cfg.watch_cache.then(|| {
        kelson_apistorage::WatchCaches::new(
            store.clone(),
            kelson_apistorage::cache::DEFAULT_CAPACITY,
        )
    });
    Ok(Arc::new(server::Api {
        caches,
        store,
        root: cfg.etcd_prefix.clone(),
        authz: auth::Authz::new(authz),
        alloc: alloc::Allocator::new(
            cfg.service_cidr()?,
            cfg.node_port_range()?,
            &cfg.etcd_prefix,
        ),
        anonymous: cfg.anonymous_auth,
        stats: Default::default(),
        metrics: Default::default(),
        ready: Default::default(),
        etcd_servers: endpoints,
        server_address,
        tokens: tokens::Tokens::new(
            cfg.service_account_signing_key_file.as_deref(),
            &cfg.service_account_key_file,
            &cfg.service_account_issuer,
            &cfg.api_audiences,
            cfg.enable_bootstrap_token_auth,
        )
        .context("loading the service account keys")?,
        audit: match &cfg.audit_log_path {
            Some(path) => {
                let policy = match &cfg.audit_policy_file {
                    Some(p) => audit::Policy::load(p)?,
                    None => audit::Policy::metadata_for_all(),
                };
                audit::Auditor::with_rotation(
                    path,
                    policy,
                    cfg.audit_log_maxsize,
                    cfg.audit_log_maxbackup,
                    cfg.audit_log_maxage,
                )?
            }
            None => audit::Auditor::default(),
        },
        kubelet: Some(nodeproxy::KubeletClient::from_config(cfg).context("the kubelet client")?),
    }))
}

/// Creates the default namespaces and the `kubernetes` service (existing ones are fine).
pub async fn bootstrap(api: &Arc<server::Api>) -> Result<(), ApiError> {
    let info = registry::lookup("", "v1", "namespaces").expect("namespaces are registered");
    for ns in DEFAULT_NAMESPACES {
        let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        match handlers::create_object(api, info, None, obj, false).await {
            Ok(_) => tracing::info!(namespace = ns, "created default namespace"),
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    // events.k8s.io Events of earlier builds move to the shared Event storage (events.rs).
    events::migrate_legacy(api).await?;
    // The in-cluster address of the API server: the range's first IP, port 443 → secure port.
    let port: u16 = api
        .server_address
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(6443);
    let svc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"type": "ClusterIP", "clusterIP": api.alloc.kubernetes_ip().to_string(),
                 "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]},
    });
    let info = registry::lookup("scheduling.k8s.io", "v1", "priorityclasses")
        .expect("priorityclasses are registered");
    for pc in admission::system_priority_classes() {
        match handlers::create_object(api, info, None, pc, false).await {
            Ok(_) | Err(ApiError { code: 409, .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let info = registry::lookup("", "v1", "services").expect("services are registered");
    match handlers::create_object(api, info, Some("default"), svc, false).await {
        Ok(_) => tracing::info!("created the kubernetes service"),
        // Exists, or its IP is held by a previous run's service: both mean it was made before.
        Err(e) if e.code == 409 || e.code == 422 => {}
        Err(e) => return Err(e),
    }
    if let Some(node) = api.authz.node() {
        node.start_feeding(api);
        node.wait_synced(Duration::from_secs(30)).await?;
    }
    auth::bootstrap_rbac(api).await
}

/// The whole daemon: serve until SIGTERM/SIGINT.
pub async fn run(cfg: ApiServerConfig, common: &CommonArgs, log: LogHandle) -> anyhow::Result<()> {
    let mut shutdown = signals::ShutdownSignals::new()?;
    let mut hup = signals::reload_signals()?;
    let state = DaemonState::new(env!("CARGO_PKG_VERSION"));
    state.set_status("connecting to the store");
    state.on_reload(|| Box::pin(async { Ok(()) }));
    cfg.validate()?;

    let addr = SocketAddr::new(cfg.bind_address, cfg.secure_port);
    let (listener, bound) = server::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let tls = kelson_runtime::tls::server_config(
        cfg.tls_cert_file.as_deref().context("--tls-cert-file")?,
        cfg.tls_private_key_file
            .as_deref()
            .context("--tls-private-key-file")?,
        cfg.client_ca_file.as_deref(),
        false,
        &[b"h2", b"http/1.1"],
    )
    .context("loading the serving certificate")?;
    let api = build(&cfg, bound.to_string()).await?;
    let caches = api.start_caches();
    tracing::info!(caches, "watch caches started");

    let dbus = kelson_runtime::dbus::serve_optional(
        common,
        "APIServer",
        &state,
        &log,
        dbus::ApiServer1 { api: api.clone() },
    )
    .await?;
    if let Some(maddr) = common.metrics_addr {
        let registry = kelson_runtime::metrics::registry();
        {
            let mut reg = registry.lock();
            reg.register(
                "apiserver_request",
                "Requests by verb and HTTP code",
                api.metrics.requests.clone(),
            );
            reg.register(
                "apiserver_longrunning_requests",
                "Open watches",
                api.metrics.watches.clone(),
            );
            reg.register(
                "apiserver_reads",
                "GET, LIST and watch requests by what served them (watch cache or store)",
                api.metrics.reads.clone(),
            );
        }
        let (mbound, _) = kelson_runtime::metrics::serve(maddr, registry)
            .await
            .context("serving metrics")?;
        tracing::info!(%mbound, "serving /metrics");
    }
    let server_task = server::serve(api.clone(), listener, tls);
    tracing::info!(addr = %bound, "serving the Kubernetes API over HTTPS");

    // Ready once the store answers and the default namespaces exist.
    let ready = async {
        let mut delay = Duration::from_millis(100);
        loop {
            // Served CRDs are loaded before READY so a restarted server serves them at once.
            match bootstrap(&api).await.and(crd::controller::load(&api).await) {
                Ok(()) => return,
                Err(e) => {
                    state.set_status(format!("waiting for the store: {e}"));
                    tracing::warn!(error = %e, "store not ready");
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    };
    tokio::select! {
        _ = ready => {}
        sig = shutdown.recv() => {
            tracing::info!(signal = sig.name(), "stopping before ready");
            server_task.abort();
            return Ok(());
        }
    }
    api.ready.store(true, Ordering::Relaxed);
    let crd_controller = crd::start(api.clone());
    // Releases allocations leaked by creates a crashed server left half done (alloc_repair).
    let alloc_repair = alloc_repair::start(api.clone(), cfg.allocation_repair_interval()?);
    state.set_status(format!("serving on {bound}"));
    state.set_state(Lifecycle::Running);
    let _watchdog = state.spawn_watchdog();
    let watches = api.clone();
    let gauge = tokio::spawn(async move {
        loop {
            watches
                .metrics
                .watches
                .set(watches.stats.watches.load(Ordering::Relaxed));
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    loop {
        tokio::select! {
            sig = shutdown.recv() => {
                tracing::info!(signal = sig.name(), "stopping");
                break;
            }
            Some(()) = hup.recv() => { let _ = state.reload().await; }
        }
    }
    state.set_state(Lifecycle::Stopping);
    gauge.abort();
    crd_controller.abort();
    alloc_repair.abort();
    server_task.abort();
    drop(dbus);
    Ok(())
}
