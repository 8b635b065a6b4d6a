//! The raft node: a cheap handle ([`RaftNode`]) and the Ready loop that owns `raft::RawNode`.
//!
//! The loop runs on a dedicated thread with its own single-threaded tokio runtime: it does
//! blocking, synced RocksDB writes and calls into the state machine, which must not stall the
//! daemon's async workers. Everything reaches it through one bounded inbox; before each `ready()`
//! the loop drains whatever is waiting, so concurrent proposals share one fsync (group commit) and
//! concurrent linearizable reads share one ReadIndex round.
//!
//! Proposals carry `proposer id ++ sequence` in the entry context; only the proposer answers its
//! caller, after the batch holding the applied entry is written and `on_durable` has run, so an
//! acknowledged write is visible to the next read on that member. The callers of one group
//! commit are answered through one message to a task on the daemon's runtime, which completes
//! them there: one cross-thread wake-up per commit instead of one per caller.
//!
//! A snapshot for a lagging peer is built off this thread (`Loop::start_snapshot_build`): the
//! loop takes the state machine's consistent view and hands serializing and writing the file to
//! a thread of its own, which streams it into the file. Raft only ever sees snapshots by their
//! metadata (`storage::FILE_DATA` as data): the transport streams the file from disk in chunks,
//! the receiving member writes it to a file, fsyncs it and only then steps the message into
//! raft; installing it (`Loop::stage_snapshot`) lets the state machine validate and prepare the
//! file first and replace its state only then, between a durable restore mark and the synced
//! batch that records the snapshot in the raft state — an interrupted restore is redone from
//! the file on restart (`finish_interrupted_restore`).
//!
//! Bootstrapping a new cluster writes the same initial state on every member: a snapshot at
//! (index 1, term 1) whose conf state holds every initial member as a voter. A member that joins
//! later starts empty and receives that (or a newer) snapshot from the leader, which is how it
//! learns the initial configuration without replaying bootstrap entries.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use prost_011::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, HardState, Message,
    Snapshot,
};
use raft::{RawNode, ReadOnlyOption, SnapshotStatus, StateRole};
use rocksdb::{WriteBatch, WriteOptions, DB};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::storage::{self, pair, RocksStorage, K_APPLIED, K_CONF_STATE, K_HARD_STATE, K_IDS};
use crate::storage::{K_MEMBERS, K_REMOVED, K_RESTORING, K_SNAPSHOT, K_TRUNCATED};
use crate::transport::{self, Members, PeerService, Removed, Transport};
use crate::{MemberInfo, NodeStatus, RaftConfig, RaftError, StateMachine};

/// Entry frame types (first byte of a normal entry's data).
const FRAME_SM: u8 = 0;
const FRAME_ATTRS: u8 = 1;
const FRAME_UPDATE: u8 = 2;

/// Messages handled before each Ready, at most (keeps tick latency bounded under load).
const DRAIN_MAX: usize = 4096;
const INBOX: usize = 16384;
/// Heartbeat ticks a ReadIndex round may go unanswered before its waiters get a fresh round.
const READ_RETRY_TICKS: u32 = 3;
/// How long a stopping member gives its peer streams to deliver what is queued (e.g. a leader
/// that removed itself: its last appends tell the others that the removal committed).
const STOP_DRAIN: Duration = Duration::from_millis(500);

type Reply = oneshot::Sender<Result<Vec<u8>, RaftError>>;
/// The answers of one Ready cycle's applied proposals (see `Loop::answer`).
type Answers = Vec<(Reply, Result<Vec<u8>, RaftError>)>;
type ReadWaiter = oneshot::Sender<Result<(), RaftError>>;

/// Everything the Ready loop accepts.
pub(crate) enum Msg {
    Propose {
        data: Vec<u8>,
        reply: Reply,
    },
    ConfChange {
        cc: ConfChange,
        check_learner_ready: bool,
        reply: Reply,
    },
    ReadIndex(oneshot::Sender<Result<(), RaftError>>),
    Raft(Message),
    Unreachable(u64),
    SnapshotStatus(u64, bool),
    TransferLeader(u64),
    /// A peer refused our traffic because this member was removed.
    Removed,
    /// The snapshot file for (index, term) was written off the Raft thread (or failed).
    SnapshotBuilt {
        index: u64,
        term: u64,
        result: Result<(), RaftError>,
    },
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Attrs {
    id: u64,
    name: String,
    client_urls: Vec<String>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct UpdateUrls {
    id: u64,
    peer_urls: Vec<String>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SnapHeader {
    cluster_id: u64,
    members: Vec<MemberInfo>,
    /// Ids of members removed from the cluster: replicated state like the member list, so a
    /// member that catches up by snapshot refuses a removed member's traffic too. (Absent in
    /// snapshots from before it was added: none known.)
    #[serde(default)]
    removed: Vec<u64>,
}

/// Snapshot data frame: b'K', version 1, u32 BE header length, JSON header, state machine data.
fn encode_snap_data(
    cluster_id: u64,
    members: Vec<MemberInfo>,
    removed: Vec<u64>,
    sm: &[u8],
) -> Vec<u8> {
    let header = serde_json::to_vec(&SnapHeader {
        cluster_id,
        members,
        removed,
    })
    .unwrap_or_default();
    let mut out = Vec::with_capacity(6 + header.len() + sm.len());
    out.extend_from_slice(&[b'K', 1]);
    out.extend_from_slice(&(header.len() as u32).to_be_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(sm);
    out
}

/// Writes the frame's head (everything before the state machine's data) to `w`.
fn write_snap_header(
    w: &mut dyn std::io::Write,
    cluster_id: u64,
    members: Vec<MemberInfo>,
    removed: Vec<u64>,
) -> Result<(), RaftError> {
    let header = serde_json::to_vec(&SnapHeader {
        cluster_id,
        members,
        removed,
    })
    .map_err(|e| RaftError::Storage(format!("encoding snapshot header: {e}")))?;
    let io = |e: std::io::Error| RaftError::Storage(format!("writing snapshot header: {e}"));
    w.write_all(&[b'K', 1]).map_err(io)?;
    w.write_all(&(header.len() as u32).to_be_bytes())
        .map_err(io)?;
    w.write_all(&header).map_err(io)
}

/// Reads the frame's head from snapshot data of `len` bytes; returns it and the length of the
/// state machine's data that follows.
fn read_snap_header(r: &mut dyn std::io::Read, len: u64) -> Result<(SnapHeader, u64), RaftError> {
    let bad = |why: &str| RaftError::Storage(format!("malformed snapshot data: {why}"));
    let mut head = [0u8; 6];
    if len < 6 {
        return Err(bad("short"));
    }
    r.read_exact(&mut head).map_err(|e| bad(&e.to_string()))?;
    if head[0] != b'K' || head[1] != 1 {
        return Err(bad("bad magic"));
    }
    let n = u32::from_be_bytes([head[2], head[3], head[4], head[5]]) as u64;
    if 6 + n > len {
        return Err(bad("short header"));
    }
    let mut buf = vec![0u8; n as usize];
    r.read_exact(&mut buf).map_err(|e| bad(&e.to_string()))?;
    let header: SnapHeader = serde_json::from_slice(&buf).map_err(|e| bad(&e.to_string()))?;
    Ok((header, len - 6 - n))
}

/// Replaces the state machine's state with the snapshot file for `meta` (fsynced in the
/// snapshot directory: received from a peer, or found again after a crash). The state
/// machine first validates and prepares it without touching its state; only then is the
/// restore mark set (synced), and the old state replaced. Returns the frame's header.
fn restore_from_file(
    storage: &RocksStorage,
    sm: &mut dyn StateMachine,
    meta: &raft::eraftpb::SnapshotMetadata,
    cluster_id: u64,
    wb: &mut WriteBatch,
) -> Result<SnapHeader, RaftError> {
    let path = storage.snap_path(meta.term, meta.index);
    let mut f = storage::open_snapshot_file(&path)?;
    if (f.meta.index, f.meta.term) != (meta.index, meta.term) {
        return Err(RaftError::Storage(format!(
            "snapshot file {} holds {}/{}",
            path.display(),
            f.meta.index,
            f.meta.term
        )));
    }
    let (header, sm_len) = read_snap_header(&mut f.data, f.data_len)?;
    if header.cluster_id != cluster_id {
        return Err(RaftError::ClusterMismatch(format!(
            "snapshot from cluster {:x}",
            header.cluster_id
        )));
    }
    let scratch = storage
        .snap_dir()
        .join(format!("restore-{:016x}", meta.index));
    let started = Instant::now();
    let prepared = sm
        .prepare_restore(&mut f.data, sm_len, &scratch)
        .map_err(RaftError::Storage)?;
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    storage.db().put_cf_opt(
        storage.cf_meta()?,
        K_RESTORING,
        pair(meta.index, meta.term),
        &wo,
    )?;
    sm.install_restore(prepared, wb)
        .map_err(RaftError::Storage)?;
    tracing::info!(
        index = meta.index,
        bytes = sm_len,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "state machine restored from snapshot file"
    );
    Ok(header)
}

/// Finishes a restore that a crash interrupted (see `storage`): restores the snapshot file
/// again and records it in the raft state exactly as the Ready loop would have.
fn finish_interrupted_restore(
    storage: &RocksStorage,
    sm: &mut dyn StateMachine,
    (index, term): (u64, u64),
) -> Result<(), RaftError> {
    tracing::warn!(
        index,
        term,
        "a snapshot restore was interrupted; restoring it again"
    );
    let cfm = storage.cf_meta()?;
    let (cid, _) = storage
        .db()
        .get_cf(cfm, K_IDS)?
        .map(|v| storage::unpair("ids", &v))
        .transpose()?
        .ok_or_else(|| RaftError::Storage("restore mark without cluster ids".into()))?;
    let meta = storage::open_snapshot_file(&storage.snap_path(term, index))?.meta;
    let mut wb = WriteBatch::default();
    let header = restore_from_file(storage, sm, &meta, cid, &mut wb)?;
    let (last, mut hs) = {
        let c = storage.core.read();
        (c.last_index, c.hs.clone())
    };
    let log = storage.cf_log()?;
    wb.delete_range_cf(
        log,
        storage::idx_key(0),
        storage::idx_key(last.max(index) + 1),
    );
    wb.put_cf(cfm, K_TRUNCATED, pair(index, term));
    wb.put_cf(cfm, K_SNAPSHOT, pair(index, term));
    wb.put_cf(cfm, K_CONF_STATE, meta.get_conf_state().encode_to_vec());
    wb.put_cf(
        cfm,
        K_MEMBERS,
        serde_json::to_vec(&header.members).unwrap_or_default(),
    );
    let mut removed: Vec<u64> = storage
        .db()
        .get_cf(cfm, K_REMOVED)?
        .and_then(|v| serde_json::from_slice(&v).ok())
        .unwrap_or_default();
    removed.extend(header.removed);
    removed.sort_unstable();
    removed.dedup();
    wb.put_cf(
        cfm,
        K_REMOVED,
        serde_json::to_vec(&removed).unwrap_or_default(),
    );
    wb.put_cf(cfm, K_APPLIED, index.to_be_bytes());
    // Raising the term without a vote is always safe. The log now ends at the snapshot, so
    // that is the commit index (raft only installs a snapshot beyond its commit index).
    if hs.term < term {
        hs.term = term;
        hs.vote = 0;
    }
    hs.commit = index;
    wb.put_cf(cfm, K_HARD_STATE, hs.encode_to_vec());
    wb.delete_cf(cfm, K_RESTORING);
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    storage.db().write_opt(wb, &wo)?;
    sm.on_durable();
    storage.prune_snapshots(2);
    Ok(())
}

fn proposal_ctx(id: u64, seq: u64) -> Vec<u8> {
    pair(id, seq).to_vec()
}

fn parse_ctx(ctx: &[u8]) -> Option<(u64, u64)> {
    if ctx.len() != 16 {
        return None;
    }
    let a = u64::from_be_bytes(ctx[..8].try_into().ok()?);
    let b = u64::from_be_bytes(ctx[8..].try_into().ok()?);
    Some((a, b))
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

struct Inner {
    id: u64,
    cluster_id: Arc<AtomicU64>,
    tx: mpsc::Sender<Msg>,
    status_rx: watch::Receiver<NodeStatus>,
    role_rx: watch::Receiver<NodeStatus>,
    members: Members,
    shutdown_tx: watch::Sender<bool>,
    stop: Mutex<Option<(oneshot::Receiver<()>, JoinHandle<()>)>>,
    request_timeout: Duration,
    election_timeout: Duration,
    max_request_bytes: usize,
    token: String,
}

/// A cheap, cloneable handle to a running raft member.
#[derive(Clone)]
pub struct RaftNode {
    inner: Arc<Inner>,
}

impl RaftNode {
    /// Opens/creates raft state in `db`, bootstraps a new cluster, joins an existing one, or
    /// rejoins from disk; starts the peer gRPC server and the Ready loop.
    pub async fn start(
        db: Arc<DB>,
        cfg: RaftConfig,
        mut sm: Box<dyn StateMachine>,
    ) -> Result<RaftNode, RaftError> {
        if cfg.heartbeat_interval.is_zero() || cfg.election_timeout < cfg.heartbeat_interval * 2 {
            return Err(RaftError::Other(
                "election timeout must be at least twice the heartbeat interval".into(),
            ));
        }
        let (mut storage, mut persisted) =
            RocksStorage::open(db.clone(), cfg.data_dir.join("snap"))?;
        if let Some(mark) = storage.restore_mark()? {
            finish_interrupted_restore(&storage, &mut *sm, mark)?;
            (storage, persisted) = RocksStorage::open(db.clone(), cfg.data_dir.join("snap"))?;
        }
        let client_tls = cfg
            .peer_tls
            .as_ref()
            .map(crate::tls::peer_client_config)
            .transpose()?;
        let server_tls = cfg
            .peer_tls
            .as_ref()
            .map(crate::tls::server_config)
            .transpose()?;
        let meta = storage.cf_meta()?;

        let (cid, id, members, mut applied) = if persisted.initialized {
            let (cid, id) = persisted.ids.ok_or_else(|| {
                RaftError::Storage("raft_meta has raft state but no cluster/member id".into())
            })?;
            // Like etcd, a data dir that already holds raft state is the truth: the
            // --initial-cluster* flags only describe how to bootstrap and are ignored here. A
            // cluster grown by `member add` changes every machine's rendered initial cluster (and
            // an added member's id is not derived from it), so refusing to start on a mismatch
            // would stop the original members from restarting. Say so when they disagree.
            let want_cid = crate::cluster_id(&cfg.initial_cluster, &cfg.initial_cluster_token);
            if !cfg.join_existing && want_cid != cid {
                tracing::info!(
                    cluster = %format!("{cid:x}"),
                    member = %format!("{id:x}"),
                    described = %format!("{want_cid:x}"),
                    "data dir already initialized: --initial-cluster and --initial-cluster-token ignored"
                );
            }
            let members = persisted.members.clone().ok_or_else(|| {
                RaftError::Storage("raft_meta has raft state but no member list".into())
            })?;
            if !members.iter().any(|m| m.id == id) {
                // It applied its own removal before it stopped (etcd refuses to start too).
                return Err(RaftError::Removed);
            }
            (cid, id, members, persisted.applied)
        } else if cfg.join_existing {
            let (cid, members) = join_lookup(&cfg, client_tls.as_ref()).await?;
            let me = members
                .iter()
                .find(|m| m.peer_urls.iter().any(|u| cfg.peer_urls.contains(u)))
                .ok_or_else(|| {
                    RaftError::ClusterMismatch(format!(
                        "peer urls {:?} are not members of the cluster: add this member first",
                        cfg.peer_urls
                    ))
                })?;
            let id = me.id;
            let mut wb = WriteBatch::default();
            wb.put_cf(meta, K_IDS, pair(cid, id));
            wb.put_cf(
                meta,
                K_MEMBERS,
                serde_json::to_vec(&members).unwrap_or_default(),
            );
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            db.write_opt(wb, &wo)?;
            (cid, id, members, 0)
        } else {
            let cid = crate::cluster_id(&cfg.initial_cluster, &cfg.initial_cluster_token);
            let (_, my_urls) = cfg
                .initial_cluster
                .iter()
                .find(|(n, _)| *n == cfg.name)
                .ok_or_else(|| {
                    RaftError::Other(format!("member {} is not in --initial-cluster", cfg.name))
                })?;
            let id = crate::member_id(&cfg.name, my_urls, &cfg.initial_cluster_token);
            let members: Vec<MemberInfo> = cfg
                .initial_cluster
                .iter()
                .map(|(name, urls)| MemberInfo {
                    id: crate::member_id(name, urls, &cfg.initial_cluster_token),
                    name: name.clone(),
                    peer_urls: urls.clone(),
                    client_urls: Vec::new(),
                    is_learner: false,
                })
                .collect();
            bootstrap(&storage, &mut *sm, cid, id, &members)?;
            (cid, id, members, 1)
        };
        let (cs, trunc) = {
            let c = storage.core.read();
            (c.cs.clone(), c.first_index - 1)
        };
        // Applied can never be below the log's truncation point (a snapshot installed it).
        applied = applied.max(trunc.min(storage.core.read().hs.commit));
        let applied_term = raft::Storage::term(&storage, applied).unwrap_or(0);

        let election_tick =
            (cfg.election_timeout.as_millis() / cfg.heartbeat_interval.as_millis()).max(2) as usize;
        let rcfg = raft::Config {
            id,
            election_tick,
            heartbeat_tick: 1,
            applied,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            pre_vote: true,
            check_quorum: true,
            read_only_option: ReadOnlyOption::Safe,
            ..Default::default()
        };
        rcfg.validate()
            .map_err(|e| RaftError::Other(format!("raft config: {e}")))?;
        let logger = crate::logger::raft_logger(id);
        let raw = RawNode::new(&rcfg, storage.clone(), &logger)
            .map_err(|e| RaftError::Storage(format!("starting raft: {e}")))?;

        let listener = tokio::net::TcpListener::bind(cfg.listen_peer_addr)
            .await
            .map_err(|e| RaftError::Transport(format!("listen {}: {e}", cfg.listen_peer_addr)))?;
        let cluster_id = Arc::new(AtomicU64::new(cid));
        let removed: Removed = Arc::new(RwLock::new(
            storage
                .db()
                .get_cf(meta, K_REMOVED)?
                .and_then(|v| serde_json::from_slice::<Vec<u64>>(&v).ok())
                .unwrap_or_default()
                .into_iter()
                .collect(),
        ));
        let members: Members = Arc::new(RwLock::new(
            members.into_iter().map(|m| (m.id, m)).collect(),
        ));
        let (tx, rx) = mpsc::channel(INBOX);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (status_tx, status_rx) = watch::channel(NodeStatus {
            id,
            ..Default::default()
        });
        let (role_tx, role_rx) = watch::channel(status_rx.borrow().clone());
        let max_msg = transport::max_grpc_message(cfg.max_request_bytes);
        let server = transport::spawn_server(
            listener,
            PeerService {
                id,
                cluster_id: cluster_id.clone(),
                inbox: tx.clone(),
                members: members.clone(),
                removed: removed.clone(),
                shutdown: shutdown_rx.clone(),
                snap_dir: storage.snap_dir().to_path_buf(),
                receiving: Arc::new(AtomicU64::new(0)),
            },
            server_tls,
            max_msg,
        )?;
        let transport = Transport::new(
            tokio::runtime::Handle::current(),
            id,
            cluster_id.clone(),
            client_tls,
            tx.clone(),
            max_msg,
            storage.snap_dir().to_path_buf(),
        );
        let snap_index = storage.core.read().snap.0;
        let (answers, mut answers_rx) = mpsc::unbounded_channel::<Answers>();
        // Completes each caller of a group commit from a worker of the daemon's runtime: the
        // Raft thread wakes one task per commit instead of every caller across threads (each
        // such wake-up is a push onto the runtime's shared inject queue and, with a parked
        // worker, a syscall), and the callers' tasks then land on that worker's local queue.
        // Ends when the loop drops its sender.
        tokio::spawn(async move {
            while let Some(batch) = answers_rx.recv().await {
                for (tx, res) in batch {
                    let _ = tx.send(res);
                }
            }
        });
        let lp = Loop {
            id,
            raw,
            storage,
            sm,
            transport,
            members: members.clone(),
            removed_ids: removed,
            removed: false,
            self_removals: Vec::new(),
            campaign_alone: false,
            snapshot_building: false,
            inbox: tx.clone(),
            cluster_id: cluster_id.clone(),
            cs,
            rx,
            shutdown_rx,
            status_tx,
            role_tx,
            pending: HashMap::new(),
            answers,
            read_waiting: Vec::new(),
            read_inflight: HashMap::new(),
            read_ready: Vec::new(),
            next_read: 1,
            applied,
            applied_term,
            // The last compaction point (the log starts after it) or snapshot, whichever is newer.
            last_snap_index: snap_index.max(trunc),
            snapshot_count: cfg.snapshot_count.max(1),
            snapshots_installed: 0,
            members_dirty: false,
            cs_dirty: false,
            removed_dirty: false,
            installed_snapshot: None,
            tick: cfg.heartbeat_interval,
            unlogged_apply_cfs: cfg.unlogged_apply_cfs.clone(),
        };
        let (done_tx, done_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("raft-{id:x}"))
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(lp.run()),
                    Err(e) => tracing::error!("raft loop runtime: {e}"),
                }
                let _ = done_tx.send(());
            })
            .map_err(|e| RaftError::Other(format!("spawning raft thread: {e}")))?;

        let node = RaftNode {
            inner: Arc::new(Inner {
                id,
                cluster_id,
                tx,
                status_rx,
                role_rx,
                members,
                shutdown_tx,
                stop: Mutex::new(Some((done_rx, server))),
                request_timeout: Duration::from_secs(5) + 2 * cfg.election_timeout,
                election_timeout: cfg.election_timeout,
                max_request_bytes: cfg.max_request_bytes,
                token: cfg.initial_cluster_token.clone(),
            }),
        };
        node.spawn_publish(cfg.name.clone(), cfg.client_urls.clone());
        tracing::info!(member = %format!("{id:x}"), cluster = %format!("{cid:x}"), applied, "raft member started");
        Ok(node)
    }

    /// Publishes this member's name and client URLs until the cluster has them (like etcd's
    /// publish on start); retries until it succeeds or the node stops.
    fn spawn_publish(&self, name: String, client_urls: Vec<String>) {
        let node = self.clone();
        let mut stop = self.inner.shutdown_tx.subscribe();
        tokio::spawn(async move {
            for attempt in 0u32.. {
                if *stop.borrow() {
                    return;
                }
                let current = node.inner.members.read().get(&node.inner.id).cloned();
                if current.is_some_and(|m| m.name == name && m.client_urls == client_urls) {
                    return;
                }
                let attrs = Attrs {
                    id: node.inner.id,
                    name: name.clone(),
                    client_urls: client_urls.clone(),
                };
                let mut data = vec![FRAME_ATTRS];
                data.extend(serde_json::to_vec(&attrs).unwrap_or_default());
                let wait = if node.status().leader_id == 0 {
                    Duration::from_millis(100)
                } else {
                    match node
                        .propose_framed(data, node.inner.election_timeout * 2)
                        .await
                    {
                        Ok(_) => continue,
                        Err(RaftError::Stopped) => return,
                        Err(e) => {
                            tracing::debug!(attempt, "publishing member attributes: {e}");
                            Duration::from_millis(200)
                        }
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.wait_for(|v| *v) => return,
                }
            }
        });
    }

    pub fn id(&self) -> u64 {
        self.inner.id
    }

    pub fn cluster_id(&self) -> u64 {
        self.inner.cluster_id.load(Ordering::Relaxed)
    }

    async fn call<T>(
        &self,
        msg: Msg,
        rx: oneshot::Receiver<Result<T, RaftError>>,
        timeout: Duration,
    ) -> Result<T, RaftError> {
        if *self.inner.shutdown_tx.borrow() {
            return Err(RaftError::Stopped);
        }
        self.inner
            .tx
            .send(msg)
            .await
            .map_err(|_| RaftError::Stopped)?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(RaftError::Stopped),
            Err(_) => Err(RaftError::Timeout),
        }
    }

    async fn propose_framed(&self, data: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, RaftError> {
        let (reply, rx) = oneshot::channel();
        self.call(Msg::Propose { data, reply }, rx, timeout).await
    }

    /// Replicates `data`, waits until it is applied locally and returns the state machine's
    /// result. Followers forward to the leader.
    pub async fn propose(&self, data: Vec<u8>) -> Result<Vec<u8>, RaftError> {
        if data.len() > self.inner.max_request_bytes {
            return Err(RaftError::TooLarge);
        }
        let mut framed = Vec::with_capacity(data.len() + 1);
        framed.push(FRAME_SM);
        framed.extend_from_slice(&data);
        self.propose_framed(framed, self.inner.request_timeout)
            .await
    }

    /// [`RaftNode::propose`] for a message encoded straight into the entry: one allocation
    /// and no copy of the encoded request on the way to the Raft thread.
    pub async fn propose_message<M: prost::Message>(&self, msg: &M) -> Result<Vec<u8>, RaftError> {
        let len = msg.encoded_len();
        if len > self.inner.max_request_bytes {
            return Err(RaftError::TooLarge);
        }
        let mut framed = Vec::with_capacity(len + 1);
        framed.push(FRAME_SM);
        msg.encode(&mut framed)
            .map_err(|e| RaftError::Other(format!("encoding a proposal: {e}")))?;
        self.propose_framed(framed, self.inner.request_timeout)
            .await
    }

    /// Linearizable read barrier: resolves once the local applied index reaches the leader's
    /// commit index as of the call. Concurrent callers share one ReadIndex round.
    pub async fn read_index(&self) -> Result<(), RaftError> {
        if self.status().leader_id == 0 {
            return Err(RaftError::NoLeader);
        }
        let (reply, rx) = oneshot::channel();
        self.call(Msg::ReadIndex(reply), rx, self.inner.request_timeout)
            .await
    }

    pub fn status(&self) -> NodeStatus {
        self.inner.status_rx.borrow().clone()
    }

    /// Changes at least on leader/term changes (in practice on every commit too).
    pub fn watch_status(&self) -> watch::Receiver<NodeStatus> {
        self.inner.status_rx.clone()
    }

    /// Like [`RaftNode::watch_status`], but changes only when the leader, term, role, learner
    /// or removed flag change — not on every commit. For tasks that react to leadership: a
    /// receiver of `watch_status` is woken by every Ready cycle (thousands per second under
    /// load), each a cross-thread wake-up of a tokio worker for nothing.
    pub fn watch_role(&self) -> watch::Receiver<NodeStatus> {
        self.inner.role_rx.clone()
    }

    pub fn members(&self) -> Vec<MemberInfo> {
        self.inner.members.read().values().cloned().collect()
    }

    async fn conf_change(
        &self,
        cc: ConfChange,
        check_learner_ready: bool,
    ) -> Result<(), RaftError> {
        let (reply, rx) = oneshot::channel();
        self.call(
            Msg::ConfChange {
                cc,
                check_learner_ready,
                reply,
            },
            rx,
            self.inner.request_timeout,
        )
        .await
        .map(|_| ())
    }

    fn check_urls_free(&self, urls: &[String], except: u64) -> Result<(), RaftError> {
        if urls.is_empty() {
            return Err(RaftError::Other("etcdserver: no peer URLs given".into()));
        }
        let members = self.inner.members.read();
        if members
            .values()
            .any(|m| m.id != except && m.peer_urls.iter().any(|u| urls.contains(u)))
        {
            return Err(RaftError::PeerUrlExists);
        }
        Ok(())
    }

    /// Adds a member (voter or learner); returns it and the member list after the change.
    pub async fn add_member(
        &self,
        peer_urls: Vec<String>,
        is_learner: bool,
    ) -> Result<(MemberInfo, Vec<MemberInfo>), RaftError> {
        self.check_urls_free(&peer_urls, 0)?;
        if is_learner && self.inner.members.read().values().any(|m| m.is_learner) {
            return Err(RaftError::TooManyLearners);
        }
        let id = crate::member_id(
            "",
            &peer_urls,
            &format!("{}/{}", self.inner.token, now_nanos()),
        );
        if self.inner.members.read().contains_key(&id) {
            return Err(RaftError::MemberExists);
        }
        let member = MemberInfo {
            id,
            name: String::new(),
            peer_urls,
            client_urls: Vec::new(),
            is_learner,
        };
        let cc = ConfChange {
            change_type: if is_learner {
                ConfChangeType::AddLearnerNode
            } else {
                ConfChangeType::AddNode
            } as i32,
            node_id: id,
            context: serde_json::to_vec(&member).unwrap_or_default(),
            id: 0,
        };
        self.conf_change(cc, false).await?;
        Ok((member, self.members()))
    }

    pub async fn remove_member(&self, id: u64) -> Result<Vec<MemberInfo>, RaftError> {
        if !self.inner.members.read().contains_key(&id) {
            return Err(RaftError::MemberNotFound);
        }
        let cc = ConfChange {
            change_type: ConfChangeType::RemoveNode as i32,
            node_id: id,
            context: Vec::new(),
            id: 0,
        };
        self.conf_change(cc, false).await?;
        // A member removing itself may have learned of the commit only from a peer refusing
        // it (see `Msg::Removed`), without applying the change to its own list.
        Ok(self.members().into_iter().filter(|m| m.id != id).collect())
    }

    pub async fn update_member(
        &self,
        id: u64,
        peer_urls: Vec<String>,
    ) -> Result<Vec<MemberInfo>, RaftError> {
        if !self.inner.members.read().contains_key(&id) {
            return Err(RaftError::MemberNotFound);
        }
        self.check_urls_free(&peer_urls, id)?;
        let mut data = vec![FRAME_UPDATE];
        data.extend(serde_json::to_vec(&UpdateUrls { id, peer_urls }).unwrap_or_default());
        self.propose_framed(data, self.inner.request_timeout)
            .await?;
        Ok(self.members())
    }

    pub async fn promote_member(&self, id: u64) -> Result<Vec<MemberInfo>, RaftError> {
        let member = self
            .inner
            .members
            .read()
            .get(&id)
            .cloned()
            .ok_or(RaftError::MemberNotFound)?;
        if !member.is_learner {
            return Err(RaftError::NotLearner);
        }
        let cc = ConfChange {
            change_type: ConfChangeType::AddNode as i32,
            node_id: id,
            context: Vec::new(),
            id: 0,
        };
        self.conf_change(cc, true).await?;
        Ok(self.members())
    }

    /// Asks the leader to hand leadership to `to` and waits (bounded) until `to` leads.
    pub async fn transfer_leader(&self, to: u64) -> Result<(), RaftError> {
        if !self.inner.members.read().contains_key(&to) {
            return Err(RaftError::MemberNotFound);
        }
        if self.status().leader_id == 0 {
            return Err(RaftError::NoLeader);
        }
        let mut st = self.watch_status();
        self.inner
            .tx
            .send(Msg::TransferLeader(to))
            .await
            .map_err(|_| RaftError::Stopped)?;
        let wait = self.inner.election_timeout * 3 + Duration::from_secs(1);
        let res = tokio::time::timeout(wait, st.wait_for(|s| s.leader_id == to))
            .await
            .map(|r| r.map(|_| ()));
        match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(RaftError::Stopped),
            Err(_) => Err(RaftError::Timeout),
        }
    }

    /// Stops the loop and the peer server; idempotent.
    pub async fn shutdown(&self) {
        self.inner.shutdown_tx.send_replace(true);
        let stop = self.inner.stop.lock().take();
        if let Some((done, mut server)) = stop {
            let _ = tokio::time::timeout(Duration::from_secs(10), done).await;
            if tokio::time::timeout(Duration::from_secs(2), &mut server)
                .await
                .is_err()
            {
                server.abort();
            }
            tracing::info!(member = %format!("{:x}", self.inner.id), "raft member stopped");
        }
    }
}

/// Asks the peers named in --initial-cluster for the member list, for a bounded time.
async fn join_lookup(
    cfg: &RaftConfig,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<(u64, Vec<MemberInfo>), RaftError> {
    let urls: Vec<String> = cfg
        .initial_cluster
        .iter()
        .flat_map(|(_, u)| u.iter().cloned())
        .filter(|u| !cfg.peer_urls.contains(u))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match transport::fetch_members(&urls, tls).await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => {
                return Err(RaftError::Transport(format!(
                    "joining existing cluster: {e}"
                )))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Writes the identical initial state every member of a new cluster starts from.
fn bootstrap(
    storage: &RocksStorage,
    sm: &mut dyn StateMachine,
    cid: u64,
    id: u64,
    members: &[MemberInfo],
) -> Result<(), RaftError> {
    let cs = ConfState {
        voters: members.iter().map(|m| m.id).collect(),
        ..Default::default()
    };
    let sm_data = sm.snapshot().map_err(RaftError::Storage)?;
    let mut snap = Snapshot {
        data: encode_snap_data(cid, members.to_vec(), Vec::new(), &sm_data),
        metadata: None,
    };
    {
        let m = snap.mut_metadata();
        m.index = 1;
        m.term = 1;
        m.set_conf_state(cs.clone());
    }
    storage.write_snapshot_file(&snap)?;
    let hs = HardState {
        term: 1,
        vote: 0,
        commit: 1,
    };
    let meta = storage.cf_meta()?;
    let mut wb = WriteBatch::default();
    wb.put_cf(meta, K_HARD_STATE, hs.encode_to_vec());
    wb.put_cf(meta, K_CONF_STATE, cs.encode_to_vec());
    wb.put_cf(meta, K_TRUNCATED, pair(1, 1));
    wb.put_cf(meta, K_SNAPSHOT, pair(1, 1));
    wb.put_cf(meta, K_APPLIED, 1u64.to_be_bytes());
    wb.put_cf(
        meta,
        K_MEMBERS,
        serde_json::to_vec(members).unwrap_or_default(),
    );
    wb.put_cf(meta, K_IDS, pair(cid, id));
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    storage.db().write_opt(wb, &wo)?;
    let mut c = storage.core.write();
    c.hs = hs;
    c.cs = cs;
    c.first_index = 2;
    c.last_index = 1;
    c.truncated_term = 1;
    c.snap = (1, 1);
    Ok(())
}

struct Loop {
    id: u64,
    raw: RawNode<RocksStorage>,
    storage: RocksStorage,
    sm: Box<dyn StateMachine>,
    transport: Transport,
    members: Members,
    /// Members removed from the cluster (shared with the peer server, persisted).
    removed_ids: Removed,
    /// This member was removed (see `NodeStatus::removed`).
    removed: bool,
    /// Proposal sequence numbers of conf changes removing this member (see `Msg::Removed`).
    self_removals: Vec<u64>,
    /// A conf change left this member the only voter: campaign once it is applied.
    campaign_alone: bool,
    /// A snapshot for peers is being built on another thread (see `start_snapshot_build`).
    snapshot_building: bool,
    /// The inbox's sending side, for the snapshot builder's report.
    inbox: mpsc::Sender<Msg>,
    cluster_id: Arc<AtomicU64>,
    cs: ConfState,
    rx: mpsc::Receiver<Msg>,
    shutdown_rx: watch::Receiver<bool>,
    status_tx: watch::Sender<NodeStatus>,
    /// See [`RaftNode::watch_role`].
    role_tx: watch::Sender<NodeStatus>,
    pending: HashMap<u64, Reply>,
    /// Hands a group commit's answers to a task on the daemon's runtime in one message.
    answers: mpsc::UnboundedSender<Answers>,
    read_waiting: Vec<ReadWaiter>,
    read_inflight: HashMap<u64, (Instant, Vec<ReadWaiter>)>,
    read_ready: Vec<(u64, Vec<ReadWaiter>)>,
    next_read: u64,
    applied: u64,
    applied_term: u64,
    last_snap_index: u64,
    snapshot_count: u64,
    snapshots_installed: u64,
    members_dirty: bool,
    cs_dirty: bool,
    removed_dirty: bool,
    /// (index, term) of a snapshot staged in the current batch.
    installed_snapshot: Option<(u64, u64)>,
    tick: Duration,
    /// See `RaftConfig::unlogged_apply_cfs`; empty = applied state goes through the WAL.
    unlogged_apply_cfs: Vec<String>,
}

impl Loop {
    async fn run(mut self) {
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown = self.shutdown_rx.clone();
        if self.cs.voters == [self.id] {
            // A single voter needs no election timeout to pass before it can lead.
            let _ = self.raw.campaign();
        }
        let mut seq: u64 = 0;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|v| *v) => break,
                _ = ticker.tick() => {
                    self.raw.tick();
                    self.gc();
                }
                m = self.rx.recv() => match m {
                    Some(m) => self.handle(m, &mut seq),
                    None => break,
                },
            }
            for _ in 0..DRAIN_MAX {
                match self.rx.try_recv() {
                    Ok(m) => self.handle(m, &mut seq),
                    Err(_) => break,
                }
            }
            self.start_read_round();
            if let Err(e) = self.on_ready() {
                tracing::error!("raft loop stopping on storage failure: {e}");
                break;
            }
            self.publish_status();
        }
        self.transport.stop_draining(STOP_DRAIN).await;
        for (_, tx) in self.pending.drain() {
            let _ = tx.send(Err(RaftError::Stopped));
        }
    }

    fn handle(&mut self, m: Msg, seq: &mut u64) {
        match m {
            Msg::Propose { data, reply } => {
                *seq += 1;
                match self.raw.propose(proposal_ctx(self.id, *seq), data) {
                    Ok(()) => {
                        self.pending.insert(*seq, reply);
                    }
                    Err(raft::Error::ProposalDropped) => {
                        let _ = reply.send(Err(RaftError::NoLeader));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(RaftError::Other(e.to_string())));
                    }
                }
            }
            Msg::ConfChange {
                cc,
                check_learner_ready,
                reply,
            } => {
                if check_learner_ready && self.raw.raft.state == StateRole::Leader {
                    let committed = self.raw.raft.raft_log.committed;
                    let matched = self
                        .raw
                        .raft
                        .prs()
                        .get(cc.node_id)
                        .map(|p| p.matched)
                        .unwrap_or(0);
                    // etcd's rule: a learner is ready once it has 90% of the leader's log.
                    if (matched as f64) < committed as f64 * 0.9 {
                        let _ = reply.send(Err(RaftError::LearnerNotReady));
                        return;
                    }
                }
                if self.raw.raft.state == StateRole::Leader && self.raw.raft.has_pending_conf() {
                    let _ = reply.send(Err(RaftError::Other(
                        "etcdserver: a configuration change is already in progress".into(),
                    )));
                    return;
                }
                *seq += 1;
                let removes_self =
                    cc.node_id == self.id && cc.change_type == ConfChangeType::RemoveNode as i32;
                match self
                    .raw
                    .propose_conf_change(proposal_ctx(self.id, *seq), cc)
                {
                    Ok(()) => {
                        self.pending.insert(*seq, reply);
                        if removes_self {
                            self.self_removals.push(*seq);
                        }
                    }
                    Err(raft::Error::ProposalDropped) => {
                        let _ = reply.send(Err(RaftError::NoLeader));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(RaftError::Other(e.to_string())));
                    }
                }
            }
            Msg::ReadIndex(tx) => self.read_waiting.push(tx),
            Msg::Raft(m) => {
                if let Err(e) = self.raw.step(m) {
                    tracing::debug!("raft step: {e}");
                }
            }
            Msg::Unreachable(id) => self.raw.report_unreachable(id),
            Msg::SnapshotStatus(id, ok) => {
                let st = if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(id, st);
                if !ok {
                    self.raw.report_unreachable(id);
                }
            }
            Msg::TransferLeader(to) => self.raw.transfer_leader(to),
            Msg::SnapshotBuilt {
                index,
                term,
                result,
            } => self.snapshot_built(index, term, result),
            Msg::Removed => {
                self.removed = true;
                // A peer refuses us only once it has applied our removal, so a removal of
                // ourselves we proposed has committed even if we never learned the commit
                // index (the leader stops replicating to a member once it applies its
                // removal): answer its caller, as etcd does before it stops.
                for seq in std::mem::take(&mut self.self_removals) {
                    if let Some(tx) = self.pending.remove(&seq) {
                        let _ = tx.send(Ok(Vec::new()));
                    }
                }
            }
        }
    }

    fn start_read_round(&mut self) {
        // (Also re-entered for rounds `gc` re-queued after raft dropped them.)
        if self.read_waiting.is_empty() {
            return;
        }
        let waiters = std::mem::take(&mut self.read_waiting);
        if self.raw.raft.leader_id == raft::INVALID_ID {
            for w in waiters {
                let _ = w.send(Err(RaftError::NoLeader));
            }
            return;
        }
        let n = self.next_read;
        self.next_read += 1;
        self.raw.read_index(n.to_be_bytes().to_vec());
        self.read_inflight.insert(n, (Instant::now(), waiters));
    }

    fn resolve_reads(&mut self) {
        let applied = self.applied;
        self.read_ready.retain_mut(|(idx, waiters)| {
            if *idx <= applied {
                for w in waiters.drain(..) {
                    let _ = w.send(Ok(()));
                }
                false
            } else {
                true
            }
        });
    }

    /// Drops bookkeeping for callers that gave up (their futures timed out), and retries read
    /// rounds raft dropped.
    fn gc(&mut self) {
        self.pending.retain(|_, tx| !tx.is_closed());
        self.read_inflight.retain(|_, (_, w)| {
            w.retain(|tx| !tx.is_closed());
            !w.is_empty()
        });
        // raft-rs drops a ReadIndex without answering when the leader has not yet committed an
        // entry in its term (just elected), when leadership moves, or when the forwarded
        // message is lost. Its waiters would otherwise sit out their whole request timeout:
        // after a few heartbeats without a ReadState, put them back in line for a fresh round.
        // A late ReadState for the abandoned round finds no waiters and is ignored.
        let retry_after = self.tick * READ_RETRY_TICKS;
        let stale: Vec<u64> = self
            .read_inflight
            .iter()
            .filter(|(_, (t, _))| t.elapsed() >= retry_after)
            .map(|(n, _)| *n)
            .collect();
        for n in stale {
            if let Some((_, waiters)) = self.read_inflight.remove(&n) {
                self.read_waiting.extend(waiters);
            }
        }
    }

    fn send(&mut self, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        for id in self.transport.send(msgs, &self.members) {
            self.raw.report_unreachable(id);
        }
    }

    fn on_ready(&mut self) -> Result<(), RaftError> {
        if !self.raw.has_ready() {
            self.resolve_reads();
            return Ok(());
        }
        let mut rd = self.raw.ready();
        let mut replies: Answers = Vec::new();
        let applied_before = self.applied;
        let storage = self.storage.clone();
        let meta = storage.cf_meta()?;
        let mut wb = WriteBatch::default();

        self.send(rd.take_messages());
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            self.stage_snapshot(snap, &mut wb)?;
        }
        for rs in rd.take_read_states() {
            let n = rs
                .request_ctx
                .as_slice()
                .try_into()
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            if let Some((_, waiters)) = self.read_inflight.remove(&n) {
                self.read_ready.push((rs.index, waiters));
            }
        }
        // Applied state goes into its own unlogged batch (see `RaftConfig::unlogged_apply_cfs`),
        // except in a Ready that installs a snapshot: that one replaces the whole state and
        // truncates the log, so all of it stays in one logged, synced batch.
        let unlogged = !self.unlogged_apply_cfs.is_empty() && self.installed_snapshot.is_none();
        let mut sm_wb = WriteBatch::default();
        self.apply_entries(
            rd.take_committed_entries(),
            if unlogged { &mut sm_wb } else { &mut wb },
            &mut replies,
        );
        self.storage.stage_entries(&mut wb, rd.entries())?;
        if let Some(hs) = rd.hs() {
            wb.put_cf(meta, K_HARD_STATE, hs.encode_to_vec());
        }
        self.stage_meta(if unlogged { &mut sm_wb } else { &mut wb })?;
        let mut wo = WriteOptions::default();
        wo.set_sync(rd.must_sync());
        // The log (with the commit index) first: at every point of the write sequence, hence in
        // every state a flush can persist, the applied index is <= the persisted commit index.
        self.storage.db().write_opt(wb, &wo)?;
        if unlogged {
            self.write_unlogged(sm_wb)?;
        }

        if let Some((index, term)) = self.installed_snapshot.take() {
            let mut c = self.storage.core.write();
            c.first_index = index + 1;
            c.last_index = index;
            c.truncated_term = term;
            c.snap = (index, term);
            c.cache.clear();
            c.cache_bytes = 0;
        }
        self.storage.commit_entries(rd.entries());
        {
            let mut c = self.storage.core.write();
            if let Some(hs) = rd.hs() {
                c.hs = hs.clone();
            }
            c.cs = self.cs.clone();
        }
        self.send(rd.take_persisted_messages());

        let mut light = self.raw.advance(rd);
        let mut wb = WriteBatch::default();
        if let Some(commit) = light.commit_index() {
            let hs = {
                let mut c = self.storage.core.write();
                c.hs.commit = commit;
                c.hs.clone()
            };
            wb.put_cf(meta, K_HARD_STATE, hs.encode_to_vec());
        }
        self.send(light.take_messages());
        self.apply_entries(light.take_committed_entries(), &mut wb, &mut replies);
        if !wb.is_empty() {
            self.stage_meta(&mut wb)?;
            // Not synced: the log holding these entries already is; a crash re-applies them.
            if self.unlogged_apply_cfs.is_empty() {
                self.storage.db().write(wb)?;
            } else {
                self.write_unlogged(wb)?;
            }
        }
        self.storage.core.write().cs = self.cs.clone();
        self.raw.advance_apply();
        if std::mem::take(&mut self.campaign_alone)
            && self.cs.voters == [self.id]
            && self.raw.raft.state != StateRole::Leader
        {
            // The other voters were removed (e.g. the leader removed itself): lead now rather
            // than after an election timeout. Only after advance_apply: raft refuses to
            // campaign while a conf change is unapplied.
            let _ = self.raw.campaign();
        }

        if self.applied != applied_before {
            self.sm.on_durable();
        }
        self.answer(replies);
        self.resolve_reads();
        self.maybe_snapshot()?;
        Ok(())
    }

    /// Answers the callers of this Ready's applied proposals (after `on_durable`: an
    /// acknowledged write is visible to the caller's next read). A lone answer goes straight
    /// to its caller — a hand-off would only add a task poll to single-client latency; more
    /// go to the answering task in one message.
    fn answer(&self, mut replies: Answers) {
        if replies.len() > 1 {
            match self.answers.send(replies) {
                Ok(()) => return,
                // The runtime is shutting down and took the task with it: answer here.
                Err(mpsc::error::SendError(back)) => replies = back,
            }
        }
        for (tx, res) in replies {
            let _ = tx.send(res);
        }
    }

    /// Writes applied state without the WAL (only with `unlogged_apply_cfs`).
    fn write_unlogged(&self, wb: WriteBatch) -> Result<(), RaftError> {
        if wb.is_empty() {
            return Ok(());
        }
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        self.storage.db().write_opt(wb, &wo)?;
        Ok(())
    }

    /// Persists every memtable, so the applied state on disk reaches `self.applied` and log
    /// entries up to it may be compacted. The column families are flushed one by one; that is
    /// still a consistent cut because this thread is the only writer and it is busy here.
    fn flush_applied_state(&self) -> Result<(), RaftError> {
        let db = self.storage.db();
        let names = self
            .unlogged_apply_cfs
            .iter()
            .map(String::as_str)
            .chain(crate::CFS.iter().copied());
        for name in names {
            let cf = db
                .cf_handle(name)
                .ok_or_else(|| RaftError::Storage(format!("column family {name} missing")))?;
            db.flush_cf(&cf)?;
        }
        Ok(())
    }

    fn stage_meta(&mut self, wb: &mut WriteBatch) -> Result<(), RaftError> {
        let meta = self.storage.cf_meta()?;
        wb.put_cf(meta, K_APPLIED, self.applied.to_be_bytes());
        if std::mem::take(&mut self.members_dirty) {
            let members: Vec<MemberInfo> = self.members.read().values().cloned().collect();
            wb.put_cf(
                meta,
                K_MEMBERS,
                serde_json::to_vec(&members).unwrap_or_default(),
            );
        }
        if std::mem::take(&mut self.cs_dirty) {
            wb.put_cf(meta, K_CONF_STATE, self.cs.encode_to_vec());
        }
        if std::mem::take(&mut self.removed_dirty) {
            let ids: Vec<u64> = self.removed_ids.read().iter().copied().collect();
            wb.put_cf(
                meta,
                K_REMOVED,
                serde_json::to_vec(&ids).unwrap_or_default(),
            );
        }
        Ok(())
    }

    /// Installs the snapshot of this Ready: the state machine restores the snapshot file the
    /// peer server received (and fsynced) before handing raft the message, and the raft state
    /// is staged into the Ready's (synced) batch, which also clears the restore mark.
    fn stage_snapshot(&mut self, snap: Snapshot, wb: &mut WriteBatch) -> Result<(), RaftError> {
        let meta = snap.get_metadata().clone();
        if snap.data != storage::FILE_DATA {
            return Err(RaftError::Storage(
                "snapshot without its file (peers stream snapshot files)".into(),
            ));
        }
        let header = restore_from_file(
            &self.storage,
            &mut *self.sm,
            &meta,
            self.cluster_id.load(Ordering::Relaxed),
            wb,
        )?;
        let last = self.storage.core.read().last_index;
        let log = self.storage.cf_log()?;
        wb.delete_range_cf(
            log,
            storage::idx_key(0),
            storage::idx_key(last.max(meta.index) + 1),
        );
        let cfm = self.storage.cf_meta()?;
        wb.put_cf(cfm, K_TRUNCATED, pair(meta.index, meta.term));
        wb.put_cf(cfm, K_SNAPSHOT, pair(meta.index, meta.term));
        wb.delete_cf(cfm, K_RESTORING);
        self.cs = meta.get_conf_state().clone();
        self.cs_dirty = true;
        {
            let mut m = self.members.write();
            *m = header
                .members
                .into_iter()
                .map(|m| (m.id, m))
                .collect::<BTreeMap<_, _>>();
        }
        self.members_dirty = true;
        // Union, not replace: an id once removed never comes back, whatever the snapshot's age.
        if !header.removed.is_empty() {
            let mut removed = self.removed_ids.write();
            removed.extend(header.removed.iter().copied());
            if removed.contains(&self.id) {
                tracing::warn!("{} (says the snapshot)", RaftError::Removed);
                self.removed = true;
            }
            self.removed_dirty = true;
        }
        self.applied = meta.index;
        self.applied_term = meta.term;
        self.last_snap_index = meta.index;
        self.snapshots_installed += 1;
        self.installed_snapshot = Some((meta.index, meta.term));
        // The received file is the newest: it stays, older ones go.
        self.storage.prune_snapshots(2);
        tracing::info!(
            index = meta.index,
            term = meta.term,
            "installed snapshot from leader"
        );
        Ok(())
    }

    fn apply_entries(&mut self, entries: Vec<Entry>, wb: &mut WriteBatch, replies: &mut Answers) {
        for e in entries {
            if e.index <= self.applied {
                continue;
            }
            let result = match EntryType::from_i32(e.entry_type) {
                Some(EntryType::EntryNormal) if e.data.is_empty() => None,
                Some(EntryType::EntryNormal) => Some(self.apply_normal(&e, wb)),
                Some(EntryType::EntryConfChange) => Some(match ConfChange::decode(&e.data[..]) {
                    Ok(cc) => self.apply_conf_change(&cc),
                    Err(err) => Err(RaftError::Other(format!("malformed conf change: {err}"))),
                }),
                Some(EntryType::EntryConfChangeV2) => {
                    Some(match ConfChangeV2::decode(&e.data[..]) {
                        Ok(cc) => self
                            .raw
                            .apply_conf_change(&cc)
                            .map(|cs| {
                                self.cs = cs;
                                self.cs_dirty = true;
                                Vec::new()
                            })
                            .map_err(|err| RaftError::Other(err.to_string())),
                        Err(err) => Err(RaftError::Other(format!("malformed conf change: {err}"))),
                    })
                }
                None => Some(Err(RaftError::Other("unknown entry type".into()))),
            };
            self.applied = e.index;
            self.applied_term = e.term;
            if let (Some(res), Some((proposer, seq))) = (result, parse_ctx(&e.context)) {
                if proposer == self.id {
                    if let Some(tx) = self.pending.remove(&seq) {
                        replies.push((tx, res));
                    }
                }
            }
        }
    }

    fn apply_normal(&mut self, e: &Entry, wb: &mut WriteBatch) -> Result<Vec<u8>, RaftError> {
        let body = &e.data[1..];
        match e.data[0] {
            FRAME_SM => Ok(self.sm.apply(e.index, e.term, body, wb)),
            FRAME_ATTRS => {
                let a: Attrs = serde_json::from_slice(body).map_err(|err| {
                    RaftError::Other(format!("malformed member attributes: {err}"))
                })?;
                let mut members = self.members.write();
                let m = members.get_mut(&a.id).ok_or(RaftError::MemberNotFound)?;
                m.name = a.name;
                m.client_urls = a.client_urls;
                self.members_dirty = true;
                Ok(Vec::new())
            }
            FRAME_UPDATE => {
                let u: UpdateUrls = serde_json::from_slice(body)
                    .map_err(|err| RaftError::Other(format!("malformed member update: {err}")))?;
                {
                    let mut members = self.members.write();
                    let m = members.get_mut(&u.id).ok_or(RaftError::MemberNotFound)?;
                    m.peer_urls = u.peer_urls;
                }
                self.members_dirty = true;
                self.transport.remove_peer(u.id);
                Ok(Vec::new())
            }
            other => Err(RaftError::Other(format!("unknown entry frame {other}"))),
        }
    }

    fn apply_conf_change(&mut self, cc: &ConfChange) -> Result<Vec<u8>, RaftError> {
        let cs = self
            .raw
            .apply_conf_change(cc)
            .map_err(|e| RaftError::Other(format!("conf change: {e}")))?;
        self.cs = cs;
        self.cs_dirty = true;
        self.campaign_alone = self.cs.voters == [self.id];
        let id = cc.node_id;
        let ctx: Option<MemberInfo> = serde_json::from_slice(&cc.context).ok();
        {
            let mut members = self.members.write();
            match ConfChangeType::from_i32(cc.change_type) {
                Some(ConfChangeType::AddNode) => {
                    if let Some(m) = members.get_mut(&id) {
                        m.is_learner = false;
                    } else if let Some(mut m) = ctx {
                        m.is_learner = false;
                        members.insert(id, m);
                    }
                }
                Some(ConfChangeType::AddLearnerNode) => {
                    if let Some(mut m) = ctx {
                        m.is_learner = true;
                        members.entry(id).or_insert(m);
                    }
                }
                Some(ConfChangeType::RemoveNode) => {
                    members.remove(&id);
                    self.transport.retire_peer(id);
                    self.removed_ids.write().insert(id);
                    self.removed_dirty = true;
                    if id == self.id {
                        tracing::warn!("{}", RaftError::Removed);
                        self.removed = true;
                    }
                }
                None => {}
            }
        }
        self.members_dirty = true;
        Ok(Vec::new())
    }

    /// Log compaction and snapshot files, decoupled.
    ///
    /// Every `snapshot_count` applied entries the log is compacted (keeping a tail so slightly
    /// lagging followers still catch up from the log) WITHOUT serializing the state machine:
    /// the state machine lives in the same RocksDB as the log and is written with its applied
    /// index in one batch, so a restart never needs the compacted entries, and RocksDB's WAL
    /// is ordered, so if the (unsynced) truncation write survives a crash, so did every state
    /// write before it. Serializing the whole keyspace here used to stall this thread for
    /// 100-300 ms every `snapshot_count` writes under load (the p99 tail of concurrent puts).
    ///
    /// A snapshot *file* is produced only when raft needs one for a peer whose next entry was
    /// compacted away (`Storage::snapshot` sets `want_snapshot`), which is what etcd does too:
    /// its raft snapshot data is the backend, materialized at send time.
    fn maybe_snapshot(&mut self) -> Result<(), RaftError> {
        let wanted = std::mem::take(&mut self.storage.core.write().want_snapshot);
        if wanted && !self.snapshot_building && self.applied > self.storage.core.read().snap.0 {
            self.start_snapshot_build();
        }
        if self.applied < self.last_snap_index + self.snapshot_count {
            return Ok(());
        }
        self.last_snap_index = self.applied;
        let keep = self.snapshot_count.min(5000);
        let compact_to = (self.applied + 1).saturating_sub(keep);
        if !self.unlogged_apply_cfs.is_empty() {
            // Unlogged applied state is durable only once flushed: a restart replays the log
            // from the flushed applied index, so those entries must survive the compaction.
            self.flush_applied_state()?;
        }
        self.storage.compact(compact_to)?;
        tracing::debug!(index = self.applied, compact_to, "compacted the raft log");
        Ok(())
    }

    /// Starts building a snapshot file for peers as of `applied`, off this thread.
    ///
    /// Only the state machine's view (`StateMachine::snapshot_job`: for kelson-kv a RocksDB
    /// snapshot, O(1)) and the membership are taken here; serializing the keyspace, encoding
    /// and writing + fsyncing the file run on a thread of their own, which reports back with
    /// `Msg::SnapshotBuilt`. Meanwhile raft keeps asking for the snapshot (and gets
    /// "temporarily unavailable"), and this thread keeps applying entries — serializing a large
    /// keyspace here used to stall heartbeats and every write for its whole duration.
    fn start_snapshot_build(&mut self) {
        let job = self.sm.snapshot_write_job();
        let (index, term) = (self.applied, self.applied_term);
        let cs = self.cs.clone();
        let members: Vec<MemberInfo> = self.members.read().values().cloned().collect();
        let mut removed: Vec<u64> = self.removed_ids.read().iter().copied().collect();
        removed.sort_unstable();
        let cluster_id = self.cluster_id.load(Ordering::Relaxed);
        let storage = self.storage.clone();
        let inbox = self.inbox.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("raft-snap-{:x}", self.id))
            .spawn(move || {
                let mut meta = raft::eraftpb::SnapshotMetadata {
                    index,
                    term,
                    ..Default::default()
                };
                meta.set_conf_state(cs);
                // Streamed into the file: the keyspace is never held in memory here.
                let result = storage.write_snapshot_file_with(&meta, |w| {
                    write_snap_header(w, cluster_id, members, removed)?;
                    job(w).map_err(RaftError::Storage)
                });
                // The loop may have stopped meanwhile; then nobody needs the answer.
                let _ = inbox.blocking_send(Msg::SnapshotBuilt {
                    index,
                    term,
                    result,
                });
            });
        match spawned {
            Ok(_) => self.snapshot_building = true,
            Err(e) => tracing::error!("spawning the snapshot builder: {e}"),
        }
    }

    /// The builder's report: make the new file the one raft hands to peers.
    fn snapshot_built(&mut self, index: u64, term: u64, result: Result<(), RaftError>) {
        self.snapshot_building = false;
        if let Err(e) = result {
            tracing::error!(index, "building a snapshot for a peer failed: {e}");
            return;
        }
        if index <= self.storage.core.read().snap.0 {
            return;
        }
        let put = self.storage.cf_meta().and_then(|cf| {
            Ok(self
                .storage
                .db()
                .put_cf(cf, K_SNAPSHOT, pair(index, term))?)
        });
        if let Err(e) = put {
            tracing::error!(index, "recording the snapshot for a peer: {e}");
            return;
        }
        self.storage.core.write().snap = (index, term);
        tracing::debug!(index, "took snapshot for a peer");
    }

    fn publish_status(&mut self) {
        let r = &self.raw.raft;
        let st = NodeStatus {
            id: self.id,
            leader_id: r.leader_id,
            term: r.term,
            commit_index: r.raft_log.committed,
            applied_index: self.applied,
            raft_index: r.raft_log.last_index(),
            is_learner: self.cs.learners.contains(&self.id),
            role: r.state.into(),
            snapshot_index: self.last_snap_index.max(self.storage.core.read().snap.0),
            snapshots_installed: self.snapshots_installed,
            removed: self.removed,
        };
        // Full status first: a task woken by the role watch may read `RaftNode::status`.
        self.status_tx.send_if_modified(|s| {
            if *s != st {
                *s = st.clone();
                true
            } else {
                false
            }
        });
        self.role_tx.send_if_modified(|s| {
            let changed = (s.leader_id, s.term, s.role, s.is_learner, s.removed)
                != (st.leader_id, st.term, st.role, st.is_learner, st.removed);
            if changed {
                *s = st.clone();
            }
            changed
        });
    }
}
