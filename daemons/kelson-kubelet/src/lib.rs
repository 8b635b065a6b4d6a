//! kelson-kubelet: the node agent.
//!
//! It registers the Node, keeps its Lease and status fresh, and runs the pods bound to it
//! through CRI v1 (containerd), with pod networking by CNI (a bridge per node over its
//! podCIDR). It is an ordinary API client: everything it knows about pods comes from a watch on
//! `spec.nodeName=<node>`, everything it reports goes through `pods/status` and
//! `nodes/status`, so it could run against any conformant API server.
//!
//! Modules: [`config`] (TOML + upstream-named flags), [`cri`] (the runtime client),
//! [`node`] (registration, status, lease), [`cni`] (network config), [`pod`] (Pod → CRI
//! configs, env, volumes, images), [`resources`] (quantities, cgroup values, QoS),
//! [`worker`] (one task per pod), [`manager`] (watch → workers, orphan clean-up),
//! [`dbus`] (`io.kelson.Kubelet1`), [`probe`] (probes and lifecycle hooks), [`events`],
//! [`volumes`] (atomic volume writer, service account tokens), [`routes`] (routes to other
//! nodes' podCIDRs), [`static_pods`] (manifest directory and mirror pods), [`eviction`]
//! (node-pressure eviction: signals, thresholds, conditions, ranking; pods over their own
//! ephemeral-storage limits), [`image_gc`] (unused images over the disk threshold),
//! [`container_gc`] (dead containers and sandboxes).
//!
//! Reload (SIGHUP or D-Bus `Reload()`) re-reads the config file with the command line's flags
//! on top (flags still win) and applies the eviction and image GC settings; other keys need a
//! restart. A config that does not parse or validate keeps the running settings.
//!
//! Lifecycle: READY=1 once the API server answered, the Node is registered, the runtime
//! answered and the pod cache has synced. SIGTERM stops the kubelet *without* touching
//! containers, so a restart adopts them.

pub mod bootstrap;
pub mod cni;
pub mod config;
pub mod container_gc;
pub mod cri;
pub mod dbus;
pub mod events;
pub mod eviction;
pub mod image_gc;
pub mod manager;
pub mod node;
pub mod pod;
pub mod probe;
pub mod resources;
pub mod routes;
pub mod server;
pub mod static_pods;
pub mod volumes;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeStatus};
use kelson_runtime::dbus::{DaemonState, Lifecycle};
use kelson_runtime::logging::LogHandle;
use kelson_runtime::signals;
use kube::api::Api;
use parking_lot::Mutex;
use tokio::sync::watch;

pub use config::{KubeletConfig, KubeletFlags};

fn cni_settings(cfg: &KubeletConfig, cidr: Option<String>) -> Option<cni::CniSettings> {
    cidr.filter(|c| !c.is_empty())
        .map(|pod_cidr| cni::CniSettings {
            pod_cidr,
            bridge: cfg.cni_bridge_name.clone(),
            ipam_data_dir: cfg.cni_ipam_data_dir.clone(),
            masquerade: cfg.cni_masquerade,
        })
}

fn node_pod_cidr(node: &Node) -> Option<String> {
    node.spec.as_ref().and_then(|s| s.pod_cidr.clone())
}

async fn runtime_ok(cri: &cri::Cri) -> Result<(), String> {
    let st = tokio::time::timeout(Duration::from_secs(10), cri.status())
        .await
        .map_err(|_| "the runtime did not answer Status within 10s".to_string())?
        .map_err(|e| e.to_string())?;
    match st.conditions.iter().find(|c| c.r#type == "RuntimeReady") {
        Some(c) if c.status => Ok(()),
        Some(c) => Err(format!("RuntimeReady=false: {} {}", c.reason, c.message)),
        None => Err("the runtime reports no RuntimeReady condition".into()),
    }
}

/// The configuration as at start-up, read again: the file (if any) with this process's own
/// command-line flags on top, so flags still win after a reload.
fn reread_config(path: Option<&std::path::Path>) -> Result<KubeletConfig, String> {
    use clap::Parser;
    let cli =
        kelson_runtime::daemon::DaemonCli::<KubeletFlags>::try_parse_from(std::env::args_os())
            .map_err(|e| format!("re-parsing the command line: {e}"))?;
    let overrides =
        kelson_runtime::config::overrides_from(&cli.flags).map_err(|e| e.to_string())?;
    kelson_runtime::config::load(path, overrides).map_err(|e| e.to_string())
}

/// Runs the kubelet until SIGTERM/SIGINT.
pub async fn run(
    cfg: KubeletConfig,
    common: &kelson_runtime::config::CommonArgs,
    log: LogHandle,
) -> anyhow::Result<()> {
    let mut shutdown = signals::ShutdownSignals::new()?;
    let mut hup = signals::reload_signals()?;
    let state = DaemonState::new(env!("CARGO_PKG_VERSION"));
    let settings = eviction::Settings::from_config(&cfg).context("invalid eviction settings")?;
    let (settings_tx, settings_rx) = watch::channel(settings);
    let settings_tx = Arc::new(settings_tx);
    {
        let config_path = common.config.clone();
        state.on_reload(move || {
            let tx = settings_tx.clone();
            let path = config_path.clone();
            Box::pin(async move {
                let new = reread_config(path.as_deref())?;
                let s = eviction::Settings::from_config(&new).map_err(|e| e.to_string())?;
                tracing::info!(
                    thresholds = s.thresholds.len(),
                    image_gc_high = s.image_gc.high,
                    "eviction and image GC settings re-read"
                );
                tx.send_replace(s);
                Ok(())
            })
        });
    }
    state.set_status("connecting to the API server and the container runtime");

    // TLS bootstrap (no-op with a usable kubeconfig), then a client whose certificate file is
    // re-read on new connections, so rotation needs no restart.
    let boot_node = cfg.node_name();
    let cert_dir = cfg.cert_dir();
    tokio::select! {
        r = bootstrap::ensure_kubeconfig(
            &cfg.kubeconfig,
            cfg.bootstrap_kubeconfig.as_deref(),
            &cert_dir,
            &boot_node,
        ) => r.context("TLS bootstrap")?,
        sig = shutdown.recv() => {
            tracing::info!(signal = sig.name(), "stopping during TLS bootstrap");
            return Ok(());
        }
    }
    let (client, conns) = bootstrap::client(&cfg.kubeconfig)
        .await
        .context("building the API client")?;
    let cri = cri::Cri::connect(&cfg.runtime_socket())?;
    let version = cri.version().await.with_context(|| {
        format!(
            "asking the runtime at {} for its version",
            cfg.container_runtime_endpoint
        )
    })?;
    let info = node::NodeInfo::from_config(
        &cfg,
        format!("{}://{}", version.runtime_name, version.runtime_version),
    )?;
    let node_name = info.name.clone();
    tracing::info!(node = %node_name, runtime = %info.runtime_version, ip = %info.ip, "starting");

    let nodes: Api<Node> = Api::all(client.clone());
    let registered = loop {
        match node::register(&nodes, &info, cfg.pod_cidr.as_deref()).await {
            Ok(n) => break n,
            Err(e) => {
                tracing::warn!(error = %e, "registering the node; retrying");
                state.set_status(format!("registering the node: {e}"));
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    sig = shutdown.recv() => {
                        tracing::info!(signal = sig.name(), "stopping before registration");
                        return Ok(());
                    }
                }
            }
        }
    };
    let pod_cidr = node_pod_cidr(&registered).or(cfg.pod_cidr.clone());
    let cni = cni_settings(&cfg, pod_cidr);
    if let Some(c) = &cni {
        cni::write_conf(&cfg.cni_conf_dir, c)?;
    }
    let shared = Arc::new(worker::Shared {
        cri: cri.clone(),
        client: client.clone(),
        ctx: pod::PodContext {
            node_name: node_name.clone(),
            node_ip: info.ip.clone(),
            pod_logs_dir: cfg.pod_logs_dir.clone(),
            root_dir: cfg.root_dir.clone(),
            cgroup_root: cfg.cgroup_root.clone(),
            allow_image_pull: cfg.allow_image_pull,
            cluster_dns: cfg.cluster_dns.clone(),
            cluster_domain: cfg.cluster_domain.clone(),
            resolv_conf: cfg.resolv_conf.clone(),
        },
        cni: Mutex::new(cni),
        cni_conf_dir: cfg.cni_conf_dir.clone(),
        phases: Mutex::new(Default::default()),
        recorder: events::Recorder::new(client.clone(), node_name.clone()),
        tokens: Default::default(),
        pods: Default::default(),
        evictions: Default::default(),
        pressure: Default::default(),
        wakers: Default::default(),
    });

    let dbus = kelson_runtime::dbus::serve_optional(
        common,
        "Kubelet",
        &state,
        &log,
        dbus::Kubelet1 {
            node_name: node_name.clone(),
            shared: shared.clone(),
            kubeconfig: cfg.kubeconfig.clone(),
        },
    )
    .await?;
    if let Some(addr) = common.metrics_addr {
        let (bound, _) = kelson_runtime::metrics::serve(addr, kelson_runtime::metrics::registry())
            .await
            .context("serving metrics")?;
        tracing::info!(%bound, "serving /metrics");
    }

    // The kubelet API (10250): its port goes into the node status below.
    let mut api_cfg = cfg.clone();
    let mut serving_request = None;
    if cfg.server_tls_bootstrap && cfg.tls_cert_file.is_none() {
        let sans = vec![node_name.clone(), info.ip.clone()];
        let (pair, _placeholder) = bootstrap::serving_pair(&cfg.cert_dir(), &sans)
            .context("preparing the serving certificate")?;
        api_cfg.tls_cert_file = Some(pair.clone());
        api_cfg.tls_private_key_file = Some(pair.clone());
        // Requests the certificate now (placeholder) or renews it before it expires.
        serving_request = Some((sans, pair));
    }
    let api_server = match server::start(&api_cfg, shared.clone(), &node_name, &info.ip).await {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(error = %e, "the kubelet API is not served (logs/exec/port-forward will fail)");
            None
        }
    };
    let kubelet_port = api_server.as_ref().map_or(cfg.port, |r| r.addr.port());

    let (stop_tx, stop_rx) = watch::channel(false);
    let status_wake = Arc::new(tokio::sync::Notify::new());
    // Node status: first post now (so the node turns Ready at once), then periodically, and
    // at once when the eviction manager changes a pressure condition.
    let status_task = {
        let (nodes, info, cri, shared, cfg, wake) = (
            nodes.clone(),
            info.clone(),
            cri.clone(),
            shared.clone(),
            cfg.clone(),
            status_wake.clone(),
        );
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut prev: Option<NodeStatus> = None;
            loop {
                let pressure = *shared.pressure.lock();
                let mut st = info.status(runtime_ok(&cri).await, pressure, prev.as_ref());
                server::set_kubelet_port(&mut st, kubelet_port);
                match node::post_status(&nodes, &info.name, &st).await {
                    Ok(n) => {
                        prev = Some(st);
                        // Node IPAM may assign a podCIDR later.
                        if let Some(c) = node_pod_cidr(&n) {
                            let mut cur = shared.cni.lock();
                            if cur.as_ref().map(|s| &s.pod_cidr) != Some(&c) {
                                *cur = cni_settings(&cfg, Some(c));
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "posting node status"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(cfg.status_interval()) => {}
                    _ = wake.notified() => {}
                    _ = stop.changed() => return,
                }
            }
        })
    };
    let lease_task = {
        let leases: Api<Lease> = Api::namespaced(client.clone(), node::LEASE_NAMESPACE);
        let duration = cfg.node_lease_duration_seconds.max(4);
        let node_obj = registered.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let every = Duration::from_secs((duration / 4).max(1) as u64);
            loop {
                if let Err(e) = node::renew_lease(&leases, &node_obj, duration).await {
                    tracing::warn!(error = %e, "renewing the node lease");
                }
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.changed() => return,
                }
            }
        })
    };
    let (synced_tx, mut synced_rx) = watch::channel(false);
    let manager_task = tokio::spawn(manager::run(
        shared.clone(),
        node_name.clone(),
        synced_tx,
        stop_rx.clone(),
    ));

    let mut extra_tasks = Vec::new();
    extra_tasks.push(tokio::spawn(container_gc::run(
        shared.clone(),
        Duration::from_secs(cfg.container_gc_period.max(1)),
        synced_rx.clone(),
        stop_rx.clone(),
    )));
    let current_cert = cfg.cert_dir().join(bootstrap::CURRENT);
    if cfg.rotate_certificates && bootstrap::kubeconfig_uses_cert(&cfg.kubeconfig, &current_cert) {
        extra_tasks.push(tokio::spawn(bootstrap::rotate(
            client.clone(),
            conns.clone(),
            cfg.cert_dir(),
            node_name.clone(),
            stop_rx.clone(),
        )));
    }
    {
        let (shared, cfg) = (shared.clone(), cfg.clone());
        extra_tasks.push(tokio::spawn(node::watch_pod_cidr(
            nodes.clone(),
            node_name.clone(),
            move |c| {
                let mut cur = shared.cni.lock();
                if cur.as_ref().map(|s| &s.pod_cidr) != Some(&c) {
                    *cur = cni_settings(&cfg, Some(c));
                }
            },
            stop_rx.clone(),
        )));
    }
    if cfg.pod_routes {
        extra_tasks.push(tokio::spawn(routes::run(
            client.clone(),
            node_name.clone(),
            cfg.pod_routes_netns.clone(),
            stop_rx.clone(),
        )));
    }
    if let Some(dir) = cfg.pod_manifest_path.clone() {
        extra_tasks.push(tokio::spawn(static_pods::run(
            shared.clone(),
            node_name.clone(),
            dir,
            Duration::from_secs(cfg.file_check_frequency.max(1)),
            stop_rx.clone(),
        )));
    }

    if let Some((sans, pair)) = serving_request {
        extra_tasks.push(tokio::spawn(bootstrap::serving_bootstrap(
            client.clone(),
            node_name.clone(),
            sans,
            pair,
            stop_rx.clone(),
        )));
    }
    // Node-pressure eviction and image GC.
    {
        let gc = Arc::new(image_gc::ImageGc::new(cri.clone()));
        let imagefs = gc.image_fs().await;
        tracing::info!(nodefs = %cfg.root_dir.display(), imagefs = ?imagefs, "eviction signals");
        let source = Arc::new(eviction::signals::Machine::new(
            cfg.root_dir.clone(),
            imagefs,
        ));
        let policy_rx = {
            // The GC loop follows the image GC part of the settings.
            let (tx, rx) = watch::channel(settings_rx.borrow().image_gc.clone());
            let mut srx = settings_rx.clone();
            let mut stop = stop_rx.clone();
            extra_tasks.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        r = srx.changed() => {
                            if r.is_err() { return; }
                            let p = srx.borrow_and_update().image_gc.clone();
                            tx.send_if_modified(|cur| if *cur != p { *cur = p; true } else { false });
                        }
                        _ = stop.changed() => return,
                    }
                }
            }));
            rx
        };
        extra_tasks.push(tokio::spawn(image_gc::run(
            gc.clone(),
            policy_rx,
            stop_rx.clone(),
        )));
        let manager = eviction::Manager {
            shared: shared.clone(),
            source,
            gc: Some(gc),
            status_wake: status_wake.clone(),
        };
        extra_tasks.push(tokio::spawn(
            manager.run(settings_rx.clone(), stop_rx.clone()),
        ));
    }

    state.set_status("syncing pods");
    tokio::select! {
        r = synced_rx.wait_for(|s| *s) => { r.context("pod manager ended before syncing")?; }
        sig = shutdown.recv() => {
            tracing::info!(signal = sig.name(), "stopping before ready");
            state.set_state(Lifecycle::Stopping);
            let _ = stop_tx.send(true);
            return Ok(());
        }
    }
    state.set_status(format!("running pods on node {node_name}"));
    state.set_state(Lifecycle::Running);
    tracing::info!(node = %node_name, "ready");
    let _watchdog = state.spawn_watchdog();

    loop {
        tokio::select! {
            sig = shutdown.recv() => {
                tracing::info!(signal = sig.name(), "stopping (containers keep running)");
                break;
            }
            Some(()) = hup.recv() => { let _ = state.reload().await; }
        }
    }
    state.set_state(Lifecycle::Stopping);
    state.set_status("stopping");
    let _ = stop_tx.send(true);
    for t in [status_task, lease_task, manager_task]
        .into_iter()
        .chain(extra_tasks)
    {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    drop(dbus);
    drop(api_server);
    Ok(())
}
