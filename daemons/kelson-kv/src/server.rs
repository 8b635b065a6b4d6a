//! Starting and stopping a kelson-kv member.
//!
//! Order matters for what clients and systemd observe: open (or refuse) the data directory,
//! recover the MVCC from disk, start Raft (which replays/bootstraps and starts the peer server),
//! then serve the etcd API on every client URL, and only report `READY=1` once the member knows a
//! leader and has applied everything committed before it started — i.e. when it can actually
//! answer a linearizable read. SIGTERM → `STOPPING=1`, stop accepting, let requests in flight
//! finish (bounded), stop Raft, flush, exit. A member that learns it was removed from the
//! cluster stops the same way (so the MemberRemove that removed it is answered) and exits 1.
//!
//! TLS certificates (client and peer listeners, the peer client, lease forwarding to the
//! leader) are re-read when the files change (`kelson_runtime::tls`, `kelson_raft::tls`), so a
//! renewal needs no restart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use kelson_etcdpb::{
    cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer,
};
use kelson_mvcc::Mvcc;
use kelson_raft::{PeerTls, RaftConfig, RaftNode};
use kelson_runtime::dbus::{DaemonState, DbusOptions, DbusServer, Lifecycle};
use kelson_runtime::logging::LogHandle;
use kelson_runtime::{signals, tls};
use kelson_watch::{WatchHub, WatchService};
use parking_lot::RwLock;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;

use crate::config::{parse_listen_url, split_urls, KvConfig};
use crate::lease::LeaseClock;
use crate::store::{Headers, KvStateMachine, MvccEvents, Shared};

/// gRPC framing overhead etcd allows on top of --max-request-bytes.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// RocksDB block cache shared by all column families.
const BLOCK_CACHE_BYTES: usize = 32 << 20;
/// One memtable of one column family.
const MEMTABLE_BYTES: usize = 16 << 20;
/// All memtables of all column families together (RocksDB's write buffer manager).
const TOTAL_MEMTABLE_BYTES: usize = 64 << 20;
/// How long a stopping member lets client requests in flight finish.
const CLIENT_DRAIN: Duration = Duration::from_secs(2);
/// Marker file identifying a kelson-kv data directory.
const MARKER: &str = "kelson-kv.version";
const DATA_VERSION: &str = "1\n";

/// Opens the RocksDB instance with every column family the store uses, refusing a directory
/// that is not a kelson-kv data dir (an etcd data dir, a random directory).
pub fn open_db(data_dir: &Path) -> anyhow::Result<Arc<rocksdb::DB>> {
    check_data_dir(data_dir)?;
    // 0700 like etcd's data dir (CIS 1.1.11); an existing directory keeps its mode.
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(data_dir)
        .with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let marker = data_dir.join(MARKER);
    if !marker.exists() {
        std::fs::write(&marker, DATA_VERSION)
            .with_context(|| format!("writing {}", marker.display()))?;
    }
    // Memory is bounded explicitly (the 1M-key RSS target): one LRU block cache shared by every
    // column family, with index and filter blocks charged to it, and a cap on the memtables of
    // all column families together. RocksDB's defaults (an 8 MiB cache per CF, 64 MiB × 2
    // memtables per CF, uncapped index blocks) add up to hundreds of MiB under a bulk load.
    let cache =
        rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES).context("creating the block cache")?;
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_block_cache(&cache);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    table.set_bloom_filter(10.0, false);
    let cf_opts = || {
        let mut o = rocksdb::Options::default();
        o.set_block_based_table_factory(&table);
        o.set_write_buffer_size(MEMTABLE_BYTES);
        // Room for memtables waiting to flush, so a flush never stalls writers; the total is
        // still capped by the write buffer manager below.
        o.set_max_write_buffer_number(4);
        o
    };
    let mut opts = cf_opts();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_db_write_buffer_size(TOTAL_MEMTABLE_BYTES);
    opts.increase_parallelism(2);
    // Applied state is written without the WAL (the Raft log is its WAL, see
    // `RaftConfig::unlogged_apply_cfs`): every flush must then persist all column families at
    // the same point, or the applied index on disk could disagree with the state it describes.
    opts.set_atomic_flush(true);
    let cfs = kelson_mvcc::CFS
        .iter()
        .chain(kelson_raft::CFS.iter())
        .map(|name| rocksdb::ColumnFamilyDescriptor::new(*name, cf_opts()));
    let path = data_dir.join("db");
    let db = rocksdb::DB::open_cf_descriptors(&opts, &path, cfs).with_context(|| {
        format!(
            "opening the store at {} (corrupt data dir?)",
            path.display()
        )
    })?;
    Ok(Arc::new(db))
}

fn check_data_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    if !dir.is_dir() {
        bail!("data dir {} is not a directory", dir.display());
    }
    let marker = dir.join(MARKER);
    if marker.exists() {
        let v = std::fs::read_to_string(&marker)
            .with_context(|| format!("reading {}", marker.display()))?;
        if v != DATA_VERSION {
            bail!(
                "data dir {} has unsupported format version {:?}",
                dir.display(),
                v.trim()
            );
        }
        return Ok(());
    }
    if dir.join("member").exists() {
        bail!(
            "data dir {} looks like an etcd data dir (has member/); kelson-kv cannot open it — \
             restore an etcd snapshot with `kelsonctl kv snapshot restore` instead",
            dir.display()
        );
    }
    let non_empty = std::fs::read_dir(dir)?.next().is_some();
    if non_empty {
        bail!(
            "data dir {} is not empty and is not a kelson-kv data dir (no {MARKER}); refusing to use it",
            dir.display()
        );
    }
    Ok(())
}

pub fn raft_config(cfg: &KvConfig) -> anyhow::Result<RaftConfig> {
    let peer_listen = split_urls(&cfg.listen_peer_urls);
    let first = peer_listen.first().context("--listen-peer-urls is empty")?;
    let ep = parse_listen_url("--listen-peer-urls", first)?;
    let peer_tls = ep.tls.then(|| PeerTls {
        cert_file: cfg.peer_cert_file.clone().unwrap_or_default(),
        key_file: cfg.peer_key_file.clone().unwrap_or_default(),
        trusted_ca_file: cfg.peer_trusted_ca_file.clone(),
        client_cert_auth: cfg.peer_client_cert_auth,
    });
    let mut rc = RaftConfig::new(&cfg.name, cfg.data_dir.clone(), ep.addr);
    rc.initial_cluster = cfg.initial_cluster()?;
    rc.initial_cluster_token = cfg.initial_cluster_token.clone();
    rc.join_existing = cfg.initial_cluster_state == "existing";
    rc.client_urls = split_urls(&cfg.advertise_client_urls);
    rc.peer_urls = split_urls(&cfg.initial_advertise_peer_urls);
    rc.peer_tls = peer_tls;
    rc.heartbeat_interval = cfg.heartbeat();
    rc.election_timeout = cfg.election();
    rc.snapshot_count = cfg.snapshot_count;
    rc.max_request_bytes = cfg.max_request_bytes + GRPC_OVERHEAD_BYTES;
    // `open_db` sets atomic_flush, which this requires.
    rc.unlogged_apply_cfs = kelson_mvcc::CFS.iter().map(|s| s.to_string()).collect();
    Ok(rc)
}

/// A running member.
pub struct Member {
    pub shared: Arc<Shared>,
    pub client_addrs: Vec<SocketAddr>,
    servers: Vec<JoinHandle<()>>,
    shutdown_tx: tokio::sync::watch::Sender<bool>,
}

/// Recovers the store, starts Raft and serves the etcd API. Returns once listeners are bound.
pub async fn start(cfg: KvConfig) -> anyhow::Result<Member> {
    cfg.validate()?;
    let db = open_db(&cfg.data_dir)?;
    let mvcc = Mvcc::open(db.clone()).context("recovering the keyspace")?;
    let leases = LeaseClock::new(&mvcc.leases());
    let mvcc = Arc::new(RwLock::new(mvcc));
    let hub = WatchHub::new(Arc::new(MvccEvents(mvcc.clone())));
    let shared = Shared::new(
        cfg.clone(),
        db.clone(),
        mvcc.clone(),
        hub.clone(),
        leases.clone(),
    );
    let sm = KvStateMachine::new(mvcc, hub.clone(), leases);
    let node = RaftNode::start(db, raft_config(&cfg)?, Box::new(sm))
        .await
        .context("starting raft")?;
    shared.set_node(node);

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let leader = Arc::new(crate::leader::LeaderClient::default());
    let max_msg = cfg.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let progress = Duration::from_millis(cfg.watch_progress_notify_interval.max(1));
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(
            KvServer::new(crate::kv_service::KvService::new(shared.clone()))
                .max_decoding_message_size(max_msg)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(
            // Encode-once fan-out server (no limit on an encoded response, as before).
            WatchService::new(hub, Arc::new(Headers(shared.clone())), progress)
                .into_server()
                .max_decoding_message_size(max_msg),
        )
        .add_service(
            LeaseServer::new(crate::lease::LeaseService::new(shared.clone(), leader))
                .max_decoding_message_size(max_msg),
        )
        .add_service(
            ClusterServer::new(crate::cluster_service::ClusterService::new(shared.clone()))
                .max_decoding_message_size(max_msg),
        )
        .add_service(
            MaintenanceServer::new(crate::maintenance::MaintenanceService::new(shared.clone()))
                .max_decoding_message_size(max_msg)
                .max_encoding_message_size(usize::MAX),
        );

    let mut servers = Vec::new();
    let mut client_addrs = Vec::new();
    let (published_tx, published) = tokio::sync::watch::channel(false);
    servers.push(tokio::spawn(watch_published(
        shared.clone(),
        split_urls(&cfg.advertise_client_urls),
        published_tx,
        shutdown_rx.clone(),
    )));
    for url in split_urls(&cfg.listen_client_urls) {
        let ep = parse_listen_url("--listen-client-urls", &url)?;
        let listener = TcpListener::bind(ep.addr)
            .await
            .with_context(|| format!("binding client URL {url}"))?;
        let addr = listener.local_addr()?;
        client_addrs.push(addr);
        let router = router.clone();
        let gate = (published.clone(), shutdown_rx.clone());
        let mut stop = shutdown_rx.clone();
        let stop_fut = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        let handle = if ep.tls {
            let server_tls = tls::server_config(
                cfg.cert_file.as_deref().context("--cert-file")?,
                cfg.key_file.as_deref().context("--key-file")?,
                cfg.trusted_ca_file.as_deref(),
                cfg.client_cert_auth,
                &[b"h2"],
            )
            .context("loading client TLS certificates")?;
            let incoming = tls::tls_incoming(listener, server_tls)
                .map(|conn| conn.map(crate::authority::AuthorityFix::new));
            tokio::spawn(async move {
                if !until_published(gate).await {
                    return;
                }
                if let Err(e) = router
                    .serve_with_incoming_shutdown(incoming, stop_fut)
                    .await
                {
                    tracing::error!(error = %e, "client server failed");
                }
            })
        } else {
            // tonic ignores its tcp_nodelay setting with serve_with_incoming: set it here (the
            // TLS acceptor does the same), or pipelined responses stall on delayed ACKs.
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
                conn.map(|tcp| {
                    let _ = tcp.set_nodelay(true);
                    crate::authority::AuthorityFix::new(tcp)
                })
            });
            tokio::spawn(async move {
                if !until_published(gate).await {
                    return;
                }
                if let Err(e) = router
                    .serve_with_incoming_shutdown(incoming, stop_fut)
                    .await
                {
                    tracing::error!(error = %e, "client server failed");
                }
            })
        };
        tracing::info!(%url, %addr, "serving etcd v3 API");
        servers.push(handle);
    }
    servers.push(tokio::spawn(crate::lease::run_expiry(
        shared.clone(),
        shutdown_rx.clone(),
    )));
    Ok(Member {
        shared,
        client_addrs,
        servers,
        shutdown_tx,
    })
}

/// Sets `published` once this member's client URLs are in its applied membership (the
/// publication `kelson_raft` proposes at start; immediate on a restart with unchanged URLs).
/// Like etcd, which serves clients only after publishing, so that no client can see a member
/// list in which the member answering has no client URLs.
async fn watch_published(
    shared: Arc<Shared>,
    urls: Vec<String>,
    published: tokio::sync::watch::Sender<bool>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let node = shared.node();
    let id = node.id();
    let mut status = node.watch_status();
    loop {
        if node
            .members()
            .iter()
            .any(|m| m.id == id && m.client_urls == urls)
        {
            let _ = published.send(true);
            return;
        }
        // Membership changes arrive with applied entries (status updates); poll as a backstop.
        tokio::select! {
            _ = tokio::time::timeout(Duration::from_millis(50), status.changed()) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Waits for [`watch_published`]; false if the member is stopping first.
async fn until_published(
    (mut published, mut stop): (
        tokio::sync::watch::Receiver<bool>,
        tokio::sync::watch::Receiver<bool>,
    ),
) -> bool {
    tokio::select! {
        r = published.wait_for(|p| *p) => r.is_ok(),
        _ = stop.wait_for(|s| *s) => false,
    }
}

impl Member {
    /// Waits until the member can serve linearizable reads (a leader exists and the local state
    /// machine has caught up with the commit index seen at that time).
    pub async fn wait_serving(&self, state: &DaemonState) {
        let node = self.shared.node();
        let mut status = node.watch_status();
        loop {
            let st = node.status();
            if st.removed {
                // `run` sees the flag and exits like etcd does.
                return;
            }
            if st.leader_id != 0 {
                state.set_status(format!(
                    "waiting to catch up (applied {})",
                    st.applied_index
                ));
                match tokio::time::timeout(Duration::from_secs(5), node.read_index()).await {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => tracing::debug!(error = %e, "read barrier not yet possible"),
                    Err(_) => tracing::debug!("read barrier timed out"),
                }
            } else {
                state.set_status("waiting for a leader");
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), status.changed()).await;
        }
    }

    /// Stops serving clients, stops Raft and flushes the store.
    ///
    /// Client servers shut down gracefully first: they stop accepting, and each connection
    /// ends once its requests in flight are answered (HTTP/2 GOAWAY), for at most
    /// [`CLIENT_DRAIN`] in all; then whatever is left (long-lived watch streams) is cut. Raft
    /// keeps running meanwhile, so those requests can still complete — this is what lets a
    /// member asked to remove itself answer the MemberRemove before it exits, like etcd.
    pub async fn stop(self) {
        let _ = self.shutdown_tx.send(true);
        let aborts: Vec<_> = self.servers.iter().map(|s| s.abort_handle()).collect();
        let drained =
            tokio::time::timeout(CLIENT_DRAIN, futures::future::join_all(self.servers)).await;
        if drained.is_err() {
            tracing::info!("client connections still open after the drain period; closing them");
            for a in aborts {
                a.abort();
            }
        }
        self.shared.node().shutdown().await;
        if let Err(e) = self.shared.db.flush_wal(true) {
            tracing::warn!(error = %e, "flushing the WAL at shutdown");
        }
        // Applied state is not in the WAL: persist it so a restart does not have to re-apply
        // the log tail (it would be correct either way). Raft has stopped, so nothing writes
        // between the per-family flushes.
        for name in kelson_mvcc::CFS.iter().chain(kelson_raft::CFS.iter()) {
            if let Some(cf) = self.shared.db.cf_handle(name) {
                if let Err(e) = self.shared.db.flush_cf(&cf) {
                    tracing::warn!(error = %e, cf = name, "flushing at shutdown");
                }
            }
        }
    }
}

/// The whole daemon: start, report readiness, serve until SIGTERM/SIGINT, stop gracefully.
pub async fn run(
    cfg: KvConfig,
    common: &kelson_runtime::config::CommonArgs,
    log: LogHandle,
) -> anyhow::Result<()> {
    let mut shutdown = signals::ShutdownSignals::new()?;
    let mut hup = signals::reload_signals()?;
    let state = DaemonState::new(env!("CARGO_PKG_VERSION"));
    state.set_status("recovering the store");
    // SIGHUP / Reload(): re-check every certificate, key and CA bundle now (client and peer
    // listeners, peer and lease-forwarding clients) instead of at the next poll.
    state.on_reload(|| {
        Box::pin(async {
            kelson_runtime::tls::reload_all();
            Ok(())
        })
    });

    let member = start(cfg.clone()).await?;
    let shared = member.shared.clone();

    let dbus = if common.no_dbus {
        None
    } else {
        let opts = DbusOptions::for_component("KV", common.dbus_address.clone());
        let path = opts.path.clone();
        let served = async {
            DbusServer::new(opts, state.clone(), log.clone())?
                .interface(crate::dbus::Kv1 {
                    shared: shared.clone(),
                })?
                .serve()
                .await
        }
        .await;
        match served {
            Ok(h) => {
                tokio::spawn(crate::dbus::watch_leader(
                    shared.clone(),
                    h.connection().clone(),
                    path,
                ));
                Some(h)
            }
            Err(e) if common.dbus_address.is_some() => return Err(e.into()),
            Err(e) => {
                // The system bus is optional for a store (dev boxes, containers): say so and go on.
                tracing::warn!(error = %e, "D-Bus unavailable; continuing without io.kelson.KV1");
                None
            }
        }
    };
    if let Some(addr) = common.metrics_addr {
        let registry = kelson_runtime::metrics::registry();
        registry
            .lock()
            .register_collector(Box::new(crate::metrics::KvCollector(shared.clone())));
        let (bound, _) = kelson_runtime::metrics::serve(addr, registry)
            .await
            .context("serving metrics")?;
        tracing::info!(%bound, "serving /metrics");
    }

    tokio::select! {
        _ = member.wait_serving(&state) => {}
        sig = shutdown.recv() => {
            tracing::info!(signal = sig.name(), "stopping before ready");
            state.set_state(Lifecycle::Stopping);
            member.stop().await;
            return Ok(());
        }
    }
    let st = shared.node().status();
    state.set_status(format!(
        "serving; member {:x}, leader {:x}, term {}",
        st.id, st.leader_id, st.term
    ));
    state.set_state(Lifecycle::Running);
    tracing::info!(member = %format!("{:x}", st.id), addrs = ?member.client_addrs, "ready to serve client requests");
    let _watchdog = state.spawn_watchdog();

    // Leadership changes only: the full status changes on every commit.
    let mut status = shared.node().watch_role();
    // journald key event on every leader change this member sees (docs/journald.md).
    let mut last_leader = None;
    let mut leader_event = |st: &kelson_raft::NodeStatus| {
        if last_leader != Some(st.leader_id) {
            last_leader = Some(st.leader_id);
            kelson_runtime::log_event!(
                tracing::Level::INFO,
                kelson_runtime::events::KV_LEADER_CHANGED,
                raft_term = st.term,
                raft_leader = %format!("{:x}", st.leader_id),
                raft_member = %format!("{:x}", st.id),
                "leader is now {:x} (term {})",
                st.leader_id,
                st.term
            );
        }
    };
    leader_event(&shared.node().status());
    let mut removed = shared.node().status().removed;
    while !removed {
        tokio::select! {
            sig = shutdown.recv() => {
                tracing::info!(signal = sig.name(), "stopping");
                break;
            }
            Some(()) = hup.recv() => { let _ = state.reload().await; }
            r = status.changed() => {
                if r.is_err() { break; }
                let st = status.borrow_and_update().clone();
                if st.removed {
                    removed = true;
                    break;
                }
                leader_event(&st);
                state.set_health(st.leader_id != 0);
                state.set_status(format!("serving; member {:x}, leader {:x}, term {}", st.id, st.leader_id, st.term));
            }
        }
    }
    if removed {
        // etcd's behaviour: a member removed from the cluster stops itself and exits non-zero
        // (a supervisor restarting it would only find it refused again).
        tracing::error!("{}", kelson_raft::RaftError::Removed);
    }
    state.set_state(Lifecycle::Stopping);
    state.set_status(if removed {
        "stopping: removed from the cluster"
    } else {
        "stopping"
    });
    tokio::time::timeout(Duration::from_secs(15), member.stop())
        .await
        .unwrap_or_else(|_| tracing::warn!("graceful stop timed out"));
    drop(dbus);
    if removed {
        bail!("{}", kelson_raft::RaftError::Removed);
    }
    Ok(())
}

/// Where kelson-kv keeps snapshot files and the DB inside a data dir.
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("db")
}
