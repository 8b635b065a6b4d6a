//! kelson-raft: the Raft replication layer of kelson-kv.
//!
//! Design in one paragraph: one thread owns a `raft::RawNode` ([`node`]) and runs the Ready loop
//! exactly as raft-rs prescribes; everything else (proposers, readers, the peer gRPC server,
//! membership calls) talks to it through one inbox, so the raft state is never shared. The log,
//! hard state, conf state, membership and applied index live in two column families of the
//! daemon's RocksDB instance ([`storage`]). The log and hard state of every Ready are one
//! logged, fsynced write; the state machine's writes for the entries it applies go, with the
//! applied index, into one batch of their own, so the applied index can never disagree with the
//! state it describes. With [`RaftConfig::unlogged_apply_cfs`] (what kelson-kv uses) that batch
//! skips RocksDB's WAL — the fsynced Raft log already is the write-ahead log of every applied
//! entry — and RocksDB's atomic flush persists applied state and index together; a crash
//! restarts from the last flushed applied index and re-applies the log after it. Peers talk over
//! a small gRPC service ([`transport`]): one client stream per peer for ordinary messages and a
//! chunked stream per snapshot, which streams the snapshot file from disk into a file on the
//! receiver (see [`node`] for how it is then installed); over mutual TLS whose certificates are
//! re-read when they are renewed ([`tls`]).
//!
//! A member that applies its own removal, or whose peers refuse its traffic because it was
//! removed, reports [`NodeStatus::removed`]; the daemon then stops like etcd does. Removed ids
//! are replicated state: every member records them when it applies the removal, persists them
//! and ships them in snapshots, so even a member that joins later refuses a removed member.
//! A MemberRemove a member is asked about itself is answered before it stops: the leader still
//! delivers what it queued for a member it removes (the commit index), and a refusal by a peer
//! proves the removal committed.
//!
//! Entry payloads are framed by this crate (first byte: 0 = state machine data, 1 = member
//! attributes, 2 = member peer-URL update) so membership metadata travels through the same log
//! as the data it belongs with.

pub mod logger;
pub mod node;
pub mod storage;
pub mod tls;
pub mod transport;

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use sha2::{Digest, Sha256};

pub use node::RaftNode;

/// Column families this crate owns in the shared RocksDB instance (the daemon opens the DB with
/// these plus the state machine's).
pub const CFS: &[&str] = &["raft_log", "raft_meta"];

/// One member of the cluster as MemberList shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemberInfo {
    pub id: u64,
    /// Empty until the member has started and published its attributes.
    pub name: String,
    pub peer_urls: Vec<String>,
    /// Empty until the member has started and published its attributes.
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

/// PEM files for mutual TLS between peers.
#[derive(Clone, Debug)]
pub struct PeerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub trusted_ca_file: Option<PathBuf>,
    pub client_cert_auth: bool,
}

/// Everything a member needs to start.
#[derive(Clone, Debug)]
pub struct RaftConfig {
    pub name: String,
    /// Snapshot files go to `snap/` under it; the DB is passed separately.
    pub data_dir: PathBuf,
    /// name -> peer urls, from --initial-cluster.
    pub initial_cluster: Vec<(String, Vec<String>)>,
    pub initial_cluster_token: String,
    /// --initial-cluster-state existing.
    pub join_existing: bool,
    /// This member's advertised client urls (published to the cluster).
    pub client_urls: Vec<String>,
    /// This member's advertised peer urls.
    pub peer_urls: Vec<String>,
    /// Where the peer gRPC server listens.
    pub listen_peer_addr: SocketAddr,
    /// Some => https peer urls, mTLS.
    pub peer_tls: Option<PeerTls>,
    /// One raft tick (default 100 ms).
    pub heartbeat_interval: Duration,
    /// election_tick = election_timeout / heartbeat_interval (default 1000 ms).
    pub election_timeout: Duration,
    /// Compact the log every N applied entries (state machine snapshots are only serialized
    /// when a lagging peer needs one).
    pub snapshot_count: u64,
    pub max_request_bytes: usize,
    /// The state machine's column families. When non-empty, applied state (the state
    /// machine's writes, the applied index, membership) is written WITHOUT RocksDB's WAL: the
    /// Raft log, which is written with the WAL and fsynced before anything is applied, already
    /// is the write-ahead log of every applied entry. The database must then be opened with
    /// `atomic_flush` so RocksDB only ever persists the applied state and its index together;
    /// after a crash the member restarts from the last flushed applied index and re-applies
    /// the log after it. These families and raft's are flushed before the log is compacted, so
    /// the entries a restart needs are never compacted away. Empty: everything goes through
    /// the WAL (for databases opened without atomic flush).
    pub unlogged_apply_cfs: Vec<String>,
}

impl RaftConfig {
    /// A single-member configuration with etcd's defaults, handy for tests and tools.
    pub fn new(name: &str, data_dir: PathBuf, listen_peer_addr: SocketAddr) -> RaftConfig {
        let peer_url = format!("http://{listen_peer_addr}");
        RaftConfig {
            name: name.to_string(),
            data_dir,
            initial_cluster: vec![(name.to_string(), vec![peer_url.clone()])],
            initial_cluster_token: "etcd-cluster".to_string(),
            join_existing: false,
            client_urls: Vec::new(),
            peer_urls: vec![peer_url],
            listen_peer_addr,
            peer_tls: None,
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: Duration::from_millis(1000),
            snapshot_count: 100_000,
            max_request_bytes: 1536 * 1024,
            unlogged_apply_cfs: Vec::new(),
        }
    }
}

/// Deterministic member id (sha256 of name, sorted peer urls and token; never 0).
pub fn member_id(name: &str, peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut h = Sha256::new();
    h.update(b"member\0");
    h.update(name.as_bytes());
    h.update([0]);
    for u in &urls {
        h.update(u.as_bytes());
        h.update([0]);
    }
    h.update(token.as_bytes());
    digest_u64(h)
}

/// Deterministic cluster id from the initial members and the token (never 0).
pub fn cluster_id(initial_cluster: &[(String, Vec<String>)], token: &str) -> u64 {
    let mut ids: Vec<u64> = initial_cluster
        .iter()
        .map(|(name, urls)| member_id(name, urls, token))
        .collect();
    ids.sort_unstable();
    let mut h = Sha256::new();
    h.update(b"cluster\0");
    for id in ids {
        h.update(id.to_be_bytes());
    }
    h.update(token.as_bytes());
    digest_u64(h)
}

fn digest_u64(h: Sha256) -> u64 {
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    match u64::from_be_bytes(b) {
        0 => 1,
        v => v,
    }
}

/// Serializes a state machine view taken earlier (see [`StateMachine::snapshot_job`]).
pub type SnapshotJob = Box<dyn FnOnce() -> Result<Vec<u8>, String> + Send>;

/// Streams a state machine view taken earlier into a writer (see
/// [`StateMachine::snapshot_write_job`]).
pub type SnapshotWriteJob = Box<dyn FnOnce(&mut dyn std::io::Write) -> Result<(), String> + Send>;

/// A snapshot the state machine has validated and staged, not yet installed (see
/// [`StateMachine::prepare_restore`]).
pub type PreparedRestore = Box<dyn std::any::Any + Send>;

/// What the replicated state machine (kelson-mvcc) must provide.
pub trait StateMachine: Send + 'static {
    /// Apply one committed normal entry's payload (what was given to `propose`). Put all writes
    /// into `wb`; the node commits `wb` together with the applied index in one write. Returns
    /// the bytes handed to the proposer's `propose` future (only on the member that proposed it).
    fn apply(
        &mut self,
        index: u64,
        term: u64,
        data: &[u8],
        wb: &mut rocksdb::WriteBatch,
    ) -> Vec<u8>;
    /// Called after the batch holding everything applied so far is durable (make it visible to
    /// readers, publish watch events).
    fn on_durable(&mut self);
    /// A consistent serialized copy of the whole state machine as of the last applied entry.
    fn snapshot(&mut self) -> Result<Vec<u8>, String>;
    /// The same bytes as [`StateMachine::snapshot`] as of now, produced later by the returned
    /// job, which runs on another thread: creating it must be cheap (e.g. take a RocksDB
    /// snapshot), so the Raft thread does not stall while a peer's snapshot is serialized.
    /// The default serializes right away.
    fn snapshot_job(&mut self) -> SnapshotJob {
        let data = self.snapshot();
        Box::new(move || data)
    }
    /// Replace the whole state with `data` (from a peer's snapshot); write through `wb`
    /// (`on_durable` follows).
    fn restore(&mut self, data: &[u8], wb: &mut rocksdb::WriteBatch) -> Result<(), String>;
    /// Like [`StateMachine::snapshot_job`], but the job streams the bytes into a writer (the
    /// snapshot file), so a large state is never held in memory. The default buffers the
    /// bytes of `snapshot_job`.
    fn snapshot_write_job(&mut self) -> SnapshotWriteJob {
        let job = self.snapshot_job();
        Box::new(move |w| {
            let data = job()?;
            w.write_all(&data).map_err(|e| e.to_string())
        })
    }
    /// First half of a restore from a peer's snapshot: read the `len` bytes of state machine
    /// data from `r` (what [`StateMachine::snapshot_write_job`] wrote), validate them and
    /// stage whatever can be staged — WITHOUT changing the current state: an error here leaves
    /// it intact. `scratch` is a directory the state machine may use for staged files. The
    /// default reads the bytes into memory.
    fn prepare_restore(
        &mut self,
        r: &mut dyn std::io::Read,
        len: u64,
        scratch: &std::path::Path,
    ) -> Result<PreparedRestore, String> {
        let _ = scratch;
        let mut data = Vec::new();
        r.take(len)
            .read_to_end(&mut data)
            .map_err(|e| format!("reading snapshot data: {e}"))?;
        if data.len() as u64 != len {
            return Err(format!(
                "snapshot data truncated: {} of {len} bytes",
                data.len()
            ));
        }
        Ok(Box::new(data))
    }
    /// Second half: replace the whole state with the prepared snapshot. Writes may go through
    /// `wb` (committed, synced, with the raft state that records the snapshot) or straight to
    /// the database; in the latter case they must be idempotent: a crash before `wb` is
    /// written makes the node prepare and install the same snapshot again on restart.
    /// `on_durable` follows. The default restores the bytes `prepare_restore` read.
    fn install_restore(
        &mut self,
        prepared: PreparedRestore,
        wb: &mut rocksdb::WriteBatch,
    ) -> Result<(), String> {
        let data = prepared
            .downcast::<Vec<u8>>()
            .map_err(|_| "prepared snapshot of an unexpected kind".to_string())?;
        self.restore(&data, wb)
    }
}

/// The raft role of this member.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Role {
    #[default]
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

impl From<raft::StateRole> for Role {
    fn from(r: raft::StateRole) -> Role {
        match r {
            raft::StateRole::Follower => Role::Follower,
            raft::StateRole::PreCandidate => Role::PreCandidate,
            raft::StateRole::Candidate => Role::Candidate,
            raft::StateRole::Leader => Role::Leader,
        }
    }
}

/// A snapshot of the node's raft progress.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStatus {
    pub id: u64,
    /// 0 = none.
    pub leader_id: u64,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    /// Last log index.
    pub raft_index: u64,
    pub is_learner: bool,
    pub role: Role,
    /// Index of the newest snapshot point: the last log compaction (the state machine is
    /// durable up to there without the log), a snapshot taken for a peer, or one received.
    pub snapshot_index: u64,
    /// How many snapshots from peers this member has installed since it started.
    pub snapshots_installed: u64,
    /// This member was removed from the cluster (it applied its own removal, or a peer refused
    /// its traffic because it was removed). Like etcd, the member must then stop: it is no
    /// longer part of any quorum and its data dir describes a cluster it is not in.
    pub removed: bool,
}

/// Errors of this crate; messages match etcd's where clients look at them.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum RaftError {
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: request is too large")]
    TooLarge,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: member ID already exist")]
    MemberExists,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    #[error("etcdserver: can only promote a learner member")]
    NotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStartedMembers,
    /// etcd's message, as it logs it before exiting.
    #[error("the member has been permanently removed from the cluster")]
    Removed,
    #[error("raft storage: {0}")]
    Storage(String),
    #[error("cluster mismatch: {0}")]
    ClusterMismatch(String),
    #[error("peer transport: {0}")]
    Transport(String),
    #[error("{0}")]
    Other(String),
}

impl From<rocksdb::Error> for RaftError {
    fn from(e: rocksdb::Error) -> Self {
        RaftError::Storage(e.to_string())
    }
}
