//! The glue between consensus and the keyspace.
//!
//! [`KvStateMachine`] is what the Raft node applies committed entries to: each entry is a
//! prost-encoded [`InternalRequest`]; applying it runs the deterministic MVCC transition into the
//! node's write batch. Nothing becomes visible to readers or watchers until the node reports the
//! batch durable (`on_durable`): then the MVCC publishes the new revisions and the watch hub gets
//! every event of them in one call. Lease bookkeeping that is not replicated state (the expiry
//! clock) is updated from the same apply path so every member knows every lease.
//!
//! [`Shared`] is the per-process context the gRPC services hold.

use std::sync::{Arc, OnceLock};

use kelson_etcdpb::internal::{internal_request, InternalRequest, InternalResponse};
use kelson_etcdpb::{Event, ResponseHeader};
use kelson_mvcc::{Mvcc, MvccError};
use kelson_raft::{RaftNode, StateMachine};
use kelson_watch::{EventSource, HeaderSource, WatchHub, WatchSourceError};
use parking_lot::RwLock;
use prost::Message;
use tonic::Status;

use crate::config::KvConfig;
use crate::errors::{raft_status, status_for_message, status_from_apply, ERR_REQUEST_TOO_LARGE};
use crate::lease::LeaseClock;

/// Per-process state shared by the gRPC services, the lease loop and D-Bus.
pub struct Shared {
    pub cfg: KvConfig,
    pub mvcc: Arc<RwLock<Mvcc>>,
    pub hub: Arc<WatchHub>,
    pub leases: Arc<LeaseClock>,
    pub db: Arc<rocksdb::DB>,
    /// Recent backend size for the per-write quota check.
    pub quota_estimate: crate::maintenance::QuotaEstimate,
    node: OnceLock<RaftNode>,
}

impl Shared {
    pub fn new(
        cfg: KvConfig,
        db: Arc<rocksdb::DB>,
        mvcc: Arc<RwLock<Mvcc>>,
        hub: Arc<WatchHub>,
        leases: Arc<LeaseClock>,
    ) -> Arc<Self> {
        Arc::new(Shared {
            cfg,
            mvcc,
            hub,
            leases,
            db,
            quota_estimate: Default::default(),
            node: OnceLock::new(),
        })
    }

    pub fn set_node(&self, node: RaftNode) {
        let _ = self.node.set(node);
    }

    /// The Raft node. Services are only started after it is set.
    pub fn node(&self) -> &RaftNode {
        self.node
            .get()
            .expect("raft node is set before services start")
    }

    pub fn header(&self, revision: i64) -> ResponseHeader {
        let node = self.node();
        ResponseHeader {
            cluster_id: node.cluster_id(),
            member_id: node.id(),
            revision,
            raft_term: node.status().term,
        }
    }

    /// Linearizable read barrier unless the client asked for a serializable read.
    pub async fn read_barrier(&self, serializable: bool) -> Result<(), Status> {
        if serializable {
            return Ok(());
        }
        self.node().read_index().await.map_err(|e| raft_status(&e))
    }

    /// Replicates one request and returns the applied response (or the etcd error it produced).
    pub async fn propose(
        &self,
        req: internal_request::Request,
    ) -> Result<InternalResponse, Status> {
        let req = InternalRequest {
            id: 0,
            request: Some(req),
        };
        if req.encoded_len() > self.cfg.max_request_bytes {
            return Err(status_for_message(ERR_REQUEST_TOO_LARGE));
        }
        let out = self
            .node()
            .propose_message(&req)
            .await
            .map_err(|e| raft_status(&e))?;
        let resp = InternalResponse::decode(out.as_slice())
            .map_err(|e| Status::internal(format!("etcdserver: bad apply result: {e}")))?;
        if !resp.error.is_empty() {
            return Err(status_from_apply(resp.error_code, &resp.error));
        }
        Ok(resp)
    }
}

/// The replicated state machine: MVCC transitions plus their side effects.
pub struct KvStateMachine {
    mvcc: Arc<RwLock<Mvcc>>,
    hub: Arc<WatchHub>,
    leases: Arc<LeaseClock>,
    pending: Vec<Event>,
    /// Every apply since the last publish filled `prev_kv` in its put events.
    pending_prev_kv: bool,
    restored: bool,
}

impl KvStateMachine {
    pub fn new(mvcc: Arc<RwLock<Mvcc>>, hub: Arc<WatchHub>, leases: Arc<LeaseClock>) -> Self {
        KvStateMachine {
            mvcc,
            hub,
            leases,
            pending: Vec::new(),
            pending_prev_kv: true,
            restored: false,
        }
    }
}

impl StateMachine for KvStateMachine {
    fn apply(
        &mut self,
        index: u64,
        _term: u64,
        data: &[u8],
        wb: &mut rocksdb::WriteBatch,
    ) -> Vec<u8> {
        let req = match InternalRequest::decode(data) {
            Ok(r) => r,
            Err(e) => {
                // A committed entry we cannot decode must not stop the member: every member
                // sees the same bytes and answers the same error, so state stays identical.
                tracing::error!(raft_index = index, error = %e, "undecodable replicated request");
                return InternalResponse {
                    error: "etcdserver: malformed request".into(),
                    error_code: tonic::Code::InvalidArgument as u32,
                    ..Default::default()
                }
                .encode_to_vec();
            }
        };
        // prev_kv in events costs a read of the previous value per put; only prev_kv watchers
        // need it. The hub sends them to the store for batches published without it.
        let prev_kv = self.hub.wants_prev_kv();
        self.pending_prev_kv &= prev_kv;
        let applied = {
            let mut m = self.mvcc.write();
            m.set_events_prev_kv(prev_kv);
            m.apply(&req, wb)
        };
        if applied.response.error.is_empty() {
            match &req.request {
                Some(internal_request::Request::LeaseGrant(g)) => self.leases.granted(g.id, g.ttl),
                Some(internal_request::Request::LeaseRevoke(r)) => self.leases.revoked(r.id),
                _ => {}
            }
        }
        self.pending.extend(applied.events);
        applied.response.encode_to_vec()
    }

    fn on_durable(&mut self) {
        let revision = {
            let mut m = self.mvcc.write();
            m.publish();
            m.current_revision()
        };
        if self.restored {
            self.restored = false;
            let leases = self.mvcc.read().leases();
            self.leases.reset(&leases);
        }
        let events = std::mem::take(&mut self.pending);
        let complete = std::mem::replace(&mut self.pending_prev_kv, true);
        self.hub.publish_batch(Arc::new(events), revision, complete);
    }

    fn snapshot(&mut self) -> Result<Vec<u8>, String> {
        self.mvcc.read().snapshot().map_err(|e| e.to_string())
    }

    fn snapshot_job(&mut self) -> kelson_raft::SnapshotJob {
        // Applied state is in RocksDB (memtables included) by the time raft asks: a RocksDB
        // snapshot taken now is the state as of the applied index; encoding it runs elsewhere.
        let view = self.mvcc.read().snapshot_view();
        Box::new(move || view.encode().map_err(|e| e.to_string()))
    }

    fn restore(&mut self, data: &[u8], wb: &mut rocksdb::WriteBatch) -> Result<(), String> {
        self.pending.clear();
        self.pending_prev_kv = true;
        self.restored = true;
        self.mvcc
            .write()
            .restore(data, wb)
            .map_err(|e| e.to_string())
    }

    fn snapshot_write_job(&mut self) -> kelson_raft::SnapshotWriteJob {
        // As `snapshot_job`, but streamed into the snapshot file instead of built in memory.
        let view = self.mvcc.read().snapshot_view();
        Box::new(move |w| view.write_to(w).map_err(|e| e.to_string()))
    }

    fn prepare_restore(
        &mut self,
        r: &mut dyn std::io::Read,
        len: u64,
        scratch: &std::path::Path,
    ) -> Result<kelson_raft::PreparedRestore, String> {
        // Validates and stages the snapshot without the store's lock: readers go on meanwhile.
        let prepared = Mvcc::prepare_restore(r, len, scratch).map_err(|e| e.to_string())?;
        Ok(Box::new(prepared))
    }

    fn install_restore(
        &mut self,
        prepared: kelson_raft::PreparedRestore,
        _wb: &mut rocksdb::WriteBatch,
    ) -> Result<(), String> {
        let prepared = prepared
            .downcast::<kelson_mvcc::PreparedRestore>()
            .map_err(|_| "prepared snapshot of an unexpected kind".to_string())?;
        self.pending.clear();
        self.pending_prev_kv = true;
        self.restored = true;
        self.mvcc
            .write()
            .install_restore(*prepared)
            .map_err(|e| e.to_string())
    }
}

/// The watch hub's view of the MVCC store.
pub struct MvccEvents(pub Arc<RwLock<Mvcc>>);

impl EventSource for MvccEvents {
    fn events(
        &self,
        from_rev: i64,
        to_rev: i64,
        limit: usize,
    ) -> Result<Vec<Event>, WatchSourceError> {
        let m = self.0.read();
        m.events(from_rev, to_rev, limit).map_err(|e| match e {
            MvccError::Compacted => WatchSourceError::Compacted {
                compact_revision: m.compact_revision(),
            },
            other => WatchSourceError::Unavailable(other.to_string()),
        })
    }
    fn current_revision(&self) -> i64 {
        self.0.read().current_revision()
    }
    fn compact_revision(&self) -> i64 {
        self.0.read().compact_revision()
    }
}

/// Response headers for the watch service.
pub struct Headers(pub Arc<Shared>);

impl HeaderSource for Headers {
    fn header(&self, revision: i64) -> ResponseHeader {
        self.0.header(revision)
    }
}
