//! The MVCC store: apply committed requests, serve reads at the published revision.
//!
//! ## Write path
//! `apply` is a pure function of (state, request): it validates like etcd's API layer and
//! applier, picks `main = current + 1` for a request that changes something, writes the new
//! `KeyValue`s / tombstones / meta into the caller's `WriteBatch`, and updates the in-memory
//! index immediately (so the next entry of the same Raft batch sees it). Values written since the
//! last `publish()` live in `pending` — the only values held in memory — because they are not in
//! RocksDB until the caller commits the batch, yet later entries of the batch need them (prev_kv,
//! compares, a txn reading its own writes).
//!
//! A plain put does not read the key's previous value: its create_revision and version come
//! from the index (per generation) and its old lease from `lease_of`. The previous value is
//! fetched only for the request's own `prev_kv`/`ignore_value`, or when the caller asks for
//! `prev_kv` in events ([`Mvcc::set_events_prev_kv`], on while some watcher wants it).
//!
//! ## Read path
//! Readers see `visible_rev`, which only `publish()` advances (after the batch is durable). The
//! index is multi-version, so a read at `visible_rev` ignores newer, unpublished revisions without
//! any copying, and every value it fetches is already in RocksDB. Reads never touch `pending`.
//! Compaction is the exception that is not hidden: it drops index entries at apply time, so a
//! read below the new compact revision fails with Compacted as soon as the compaction is applied
//! (reads at or above it are unaffected because compaction keeps what they see).
//!
//! ## Restore
//! `restore` builds the new state from the blob, queues "delete everything, write the blob" into
//! the batch, and swaps the state for the writer at once (entries after the snapshot apply on top
//! of it). Readers get `Restoring` (Unavailable) until `publish()`, since the old keyspace may
//! already be gone from disk and the new one may not be yet.
//!
//! ## Memory
//! Measured with `examples/index_mem.rs` (release build, ~41-byte Kubernetes-like keys, one
//! revision each, 100-byte values), as RSS deltas in fresh processes:
//!
//! | keys | index by inserts | index bulk-loaded (after open) | whole store reopened | process RSS |
//! |------|------------------|--------------------------------|----------------------|-------------|
//! | 200k | 146 B/key        | 116 B/key                      | 193 B/key            | 50 MB       |
//! | 1M   | 146 B/key        | 115 B/key                      | 143 B/key            | 155 MB      |
//!
//! Per key: the 16-byte `KeyIndex` and 16-byte boxed-key pointer in a B-tree slot, the key's own
//! allocation (41 bytes -> a 64-byte malloc chunk), and node overhead. `open` bulk-loads the map
//! from sorted order so nodes are full; keys inserted later by `apply` cost ~30 bytes more.
//!
//! ## Failure model
//! Validation happens before any change, so a rejected request changes nothing. A RocksDB read
//! error in the middle of applying a request (reading a previous value) is reported in the
//! response but may leave the in-memory index partly updated; the daemon should treat
//! `Storage`/`Corrupt` errors from `apply` as fatal and restart (the index is rebuilt from disk).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use kelson_etcdpb::etcdserverpb::{
    alarm_request::AlarmAction, range_request::SortOrder, range_request::SortTarget,
    request_op::Request, response_op::Response as OpResponse, AlarmMember, AlarmRequest,
    AlarmResponse, AlarmType, CompactionRequest, CompactionResponse, DeleteRangeRequest,
    DeleteRangeResponse, LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, ResponseHeader,
    ResponseOp, TxnRequest, TxnResponse,
};
use kelson_etcdpb::internal::{
    internal_request::Request as IReq, internal_response::Response as IResp, Barrier,
    InternalRequest, InternalResponse,
};
use kelson_etcdpb::mvccpb::{event::EventType, Event, KeyValue};
use prost::Message;
use rocksdb::{IteratorMode, WriteBatch, DB};

use crate::index::KeyIndex;
use crate::revision::Rev;
use crate::txn::{self, KeyRange};
use crate::{MvccError, CFS};

// Streaming snapshot write and restore (a child module: it swaps this module's private state).
mod restore;
pub use restore::PreparedRestore;

const CF_KV: &str = "kv";
const CF_META: &str = "mvcc_meta";
const CF_LEASE: &str = "lease";
const META_CURRENT_REV: &[u8] = b"current_rev";
const META_COMPACT_REV: &[u8] = b"compact_rev";
const META_ALARMS: &[u8] = b"alarms";
/// etcd's `MaxLeaseTTL`.
const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// Upper bound for "delete every key" in our column families: all our keys are shorter.
const DELETE_ALL_END: [u8; 64] = [0xff; 64];

/// Resolves a column family handle; a missing family is a corrupt (wrongly opened) database.
macro_rules! cf {
    ($db:expr, $name:expr) => {
        $db.cf_handle($name)
            .ok_or_else(|| MvccError::Corrupt(format!("column family {} missing", $name)))?
    };
}

/// The outcome of applying one request.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    pub response: InternalResponse,
    /// Changes made, in sub-revision order, with `prev_kv` filled.
    pub events: Vec<Event>,
    /// The current revision after this request.
    pub revision: i64,
}

#[derive(Debug, Clone, Default)]
struct LeaseEntry {
    ttl: i64,
    keys: BTreeSet<Box<[u8]>>,
}

/// Everything that `restore` replaces at once.
#[derive(Debug, Default)]
struct State {
    index: BTreeMap<Box<[u8]>, KeyIndex>,
    current_rev: i64,
    compact_rev: i64,
    leases: BTreeMap<i64, LeaseEntry>,
    /// The lease of every live key that has one (most keys have none): what a put needs to
    /// move the key between leases without reading its previous value.
    lease_of: HashMap<Box<[u8]>, i64>,
    alarms: Vec<AlarmMember>,
    live_keys: usize,
}

impl State {
    fn nospace(&self) -> bool {
        self.alarms
            .iter()
            .any(|a| a.alarm == AlarmType::Nospace as i32)
    }

    fn latest(&self, key: &[u8]) -> Option<Rev> {
        self.index.get(key).and_then(KeyIndex::latest)
    }

    /// Live keys of `range` at main revision `at`, in key order, with the revision of each.
    fn live_in(&self, range: &KeyRange<'_>, at: i64) -> Vec<(&[u8], Rev)> {
        match *range {
            KeyRange::Point(k) => self
                .index
                .get_key_value(k)
                .and_then(|(k, ki)| ki.get(at).map(|r| (&k[..], r)))
                .into_iter()
                .collect(),
            KeyRange::Span(start, end) => {
                if end.is_some_and(|e| e <= start) {
                    return Vec::new();
                }
                let hi = end.map_or(Bound::Unbounded, Bound::Excluded);
                self.index
                    .range::<[u8], _>((Bound::Included(start), hi))
                    .filter_map(|(k, ki)| ki.get(at).map(|r| (&k[..], r)))
                    .collect()
            }
        }
    }
}

/// Rebuilds a `State` from records in key order (RocksDB scan or snapshot blob).
#[derive(Default)]
struct Loader {
    st: State,
    max_main: i64,
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> MvccError {
    MvccError::Corrupt(format!("{what}: {e}"))
}

fn be_i64(v: &[u8], what: &str) -> Result<i64, MvccError> {
    Ok(i64::from_be_bytes(
        v.try_into().map_err(|_| corrupt(what, "not 8 bytes"))?,
    ))
}

fn encode_alarms(alarms: &[AlarmMember]) -> Vec<u8> {
    let mut v = Vec::with_capacity(alarms.len() * 12);
    for a in alarms {
        v.extend_from_slice(&a.member_id.to_be_bytes());
        v.extend_from_slice(&a.alarm.to_be_bytes());
    }
    v
}

fn decode_alarms(v: &[u8]) -> Result<Vec<AlarmMember>, MvccError> {
    let chunks = v.chunks_exact(12);
    if !chunks.remainder().is_empty() {
        return Err(corrupt("alarms", "bad length"));
    }
    Ok(chunks
        .map(|c| AlarmMember {
            member_id: u64::from_be_bytes(c[..8].try_into().expect("8 bytes")),
            alarm: i32::from_be_bytes(c[8..].try_into().expect("4 bytes")),
        })
        .collect())
}

impl Loader {
    fn kv(&mut self, k: &[u8], v: &[u8]) -> Result<(), MvccError> {
        let (rev, tombstone) = Rev::from_key(k)?;
        let kv = KeyValue::decode(v).map_err(|e| corrupt("kv value", e))?;
        self.max_main = self.max_main.max(rev.main);
        let st = &mut self.st;
        if tombstone {
            st.lease_of.remove(kv.key.as_slice());
            match st.index.get_mut(kv.key.as_slice()) {
                Some(ki) => {
                    if ki.latest().is_some() {
                        st.live_keys -= 1;
                    }
                    ki.tombstone(rev);
                }
                None => {
                    st.index
                        .insert(kv.key.into_boxed_slice(), KeyIndex::new_tombstone(rev));
                }
            }
        } else {
            // The stored create_revision/version are authoritative: compaction may have
            // dropped the revisions the index would otherwise count them from.
            match st.index.get_mut(kv.key.as_slice()) {
                Some(ki) => {
                    if ki.latest().is_none() {
                        st.live_keys += 1;
                    }
                    ki.put_loaded(rev, kv.create_revision, kv.version);
                }
                None => {
                    st.live_keys += 1;
                    st.index.insert(
                        kv.key.clone().into_boxed_slice(),
                        KeyIndex::loaded(rev, kv.create_revision, kv.version),
                    );
                }
            }
            if kv.lease != 0 {
                st.lease_of.insert(kv.key.into_boxed_slice(), kv.lease);
            } else {
                st.lease_of.remove(kv.key.as_slice());
            }
        }
        Ok(())
    }

    fn meta(&mut self, k: &[u8], v: &[u8]) -> Result<(), MvccError> {
        match k {
            META_CURRENT_REV => self.st.current_rev = be_i64(v, "current_rev")?,
            META_COMPACT_REV => self.st.compact_rev = be_i64(v, "compact_rev")?,
            META_ALARMS => self.st.alarms = decode_alarms(v)?,
            _ => {} // Written by a newer version: not ours to interpret.
        }
        Ok(())
    }

    fn lease(&mut self, k: &[u8], v: &[u8]) -> Result<(), MvccError> {
        let id = be_i64(k, "lease id")?;
        let ttl = be_i64(v, "lease ttl")?;
        self.st.leases.insert(
            id,
            LeaseEntry {
                ttl,
                keys: BTreeSet::new(),
            },
        );
        Ok(())
    }

    fn record(&mut self, cf: &str, k: &[u8], v: &[u8]) -> Result<(), MvccError> {
        match cf {
            CF_KV => self.kv(k, v),
            CF_META => self.meta(k, v),
            CF_LEASE => self.lease(k, v),
            other => Err(corrupt("unknown column family", other)),
        }
    }

    fn finish(mut self) -> State {
        // Insertions during the scan come in revision order and leave B-tree nodes about half
        // full; rebuilding from the (sorted) map bulk-loads full nodes: ~25 bytes less per key.
        self.st.index = std::mem::take(&mut self.st.index).into_iter().collect();
        for (key, lease) in &self.st.lease_of {
            match self.st.leases.get_mut(lease) {
                Some(l) => {
                    l.keys.insert(key.clone());
                }
                None => tracing::warn!(lease, "key attached to an unknown lease"),
            }
        }
        // An empty store is at revision 1, as etcd's.
        self.st.current_rev = self.st.current_rev.max(self.max_main).max(1);
        self.st
    }
}

/// etcd's MVCC keyspace over RocksDB. See the module docs for the apply/publish contract.
/// An owned, consistent read view of the MVCC column families: what [`Mvcc::snapshot`]
/// encodes, taken at one instant and encodable later on any thread. The Raft layer uses it to
/// build a snapshot for a peer without stalling the thread that applies entries: taking the
/// view is O(1), the iteration and encoding (proportional to the keyspace) happen elsewhere.
pub struct SnapshotView {
    // Field order matters: `snap` borrows the DB that `db` keeps alive, so it must drop first.
    snap: rocksdb::Snapshot<'static>,
    db: Arc<DB>,
}

impl SnapshotView {
    /// Encodes every record visible in the view (the snapshot blob format of [`crate::snapshot`]).
    pub fn encode(&self) -> Result<Vec<u8>, MvccError> {
        let mut sections = Vec::with_capacity(CFS.len());
        for name in CFS {
            let cf = cf!(self.db, name);
            let mut recs = Vec::new();
            for item in self.snap.iterator_cf(&cf, IteratorMode::Start) {
                let (k, v) = item?;
                recs.push((k.into_vec(), v.into_vec()));
            }
            sections.push((name.to_string(), recs));
        }
        Ok(crate::snapshot::encode(&sections))
    }
}

pub struct Mvcc {
    db: Arc<DB>,
    st: State,
    visible_rev: i64,
    pending: HashMap<Rev, KeyValue>,
    restoring: bool,
    /// Whether put events must carry `prev_kv` (see [`Mvcc::set_events_prev_kv`]).
    events_prev_kv: bool,
}

impl std::fmt::Debug for Mvcc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mvcc")
            .field("current_rev", &self.st.current_rev)
            .field("visible_rev", &self.visible_rev)
            .field("compact_rev", &self.st.compact_rev)
            .field("keys", &self.st.index.len())
            .finish()
    }
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

impl Mvcc {
    /// Opens the store over `db` (which must have the column families in [`CFS`]) and rebuilds
    /// the index, revisions, leases and alarms from it.
    pub fn open(db: Arc<DB>) -> Result<Mvcc, MvccError> {
        let mut loader = Loader::default();
        for name in CFS {
            let cf = cf!(db, name);
            for item in db.iterator_cf(&cf, IteratorMode::Start) {
                let (k, v) = item?;
                loader.record(name, &k, &v)?;
            }
        }
        let st = loader.finish();
        let visible_rev = st.current_rev;
        tracing::info!(
            revision = st.current_rev,
            compact_revision = st.compact_rev,
            keys = st.live_keys,
            leases = st.leases.len(),
            "mvcc store opened"
        );
        Ok(Mvcc {
            db,
            st,
            visible_rev,
            pending: HashMap::new(),
            restoring: false,
            events_prev_kv: true,
        })
    }

    /// Whether the events of the following applies must carry `prev_kv` for puts (deletes
    /// always do). Filling it costs a read of the previous value per put, which only watchers
    /// created with `prev_kv` need; the daemon turns it on while such watchers exist. It does
    /// not change replicated state or responses (a put's own `prev_kv` option still works).
    /// Default: on.
    pub fn set_events_prev_kv(&mut self, on: bool) {
        self.events_prev_kv = on;
    }

    /// Applies one committed request. Deterministic; see the module docs.
    pub fn apply(&mut self, req: &InternalRequest, wb: &mut WriteBatch) -> Applied {
        let db = Arc::clone(&self.db);
        let main = self.st.current_rev + 1;
        let mut w = Writer {
            m: self,
            db: &db,
            wb,
            main,
            sub: 0,
            events: Vec::new(),
        };
        let result = w.apply(req);
        let changed = w.sub > 0;
        let events = std::mem::take(&mut w.events);
        if changed {
            self.st.current_rev = main;
            if let Some(cf) = db.cf_handle(CF_META) {
                wb.put_cf(&cf, META_CURRENT_REV, main.to_be_bytes());
            }
        }
        let mut response = InternalResponse::default();
        match result {
            Ok(r) => response.response = Some(r),
            Err(e) => {
                if matches!(e, MvccError::Storage(_) | MvccError::Corrupt(_)) {
                    tracing::error!(error = %e, id = req.id, "apply failed on storage");
                }
                response.error = e.etcd_message().to_string();
                response.error_code = e.grpc_code();
            }
        }
        Applied {
            response,
            events,
            revision: self.st.current_rev,
        }
    }

    /// Makes everything applied so far visible to readers; call once the batch is durable.
    pub fn publish(&mut self) {
        self.visible_rev = self.st.current_rev;
        self.pending.clear();
        self.restoring = false;
    }

    fn readable(&self) -> Result<(), MvccError> {
        if self.restoring {
            return Err(MvccError::Restoring);
        }
        Ok(())
    }

    /// A Range at the published revision (or the requested older one).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        self.readable()?;
        txn::check_range(req)?;
        self.range_at(req, self.visible_rev, false)
    }

    /// True if the txn contains a put or delete anywhere (then it must go through Raft).
    pub fn has_writes(req: &TxnRequest) -> bool {
        txn::has_writes(req)
    }

    /// A txn without writes, served from the published revision.
    pub fn txn_read_only(&self, req: &TxnRequest) -> Result<TxnResponse, MvccError> {
        self.readable()?;
        if txn::has_writes(req) {
            return Err(MvccError::NotReadOnly);
        }
        txn::check_txn(req)?;
        let rev = self.visible_rev;
        let mut path = Vec::new();
        self.txn_path(req, rev, false, &mut path)?;
        let mut cursor = 0;
        self.read_txn(req, rev, &path, &mut cursor)
    }

    fn read_txn(
        &self,
        t: &TxnRequest,
        rev: i64,
        path: &[bool],
        cursor: &mut usize,
    ) -> Result<TxnResponse, MvccError> {
        let succeeded = path.get(*cursor).copied().unwrap_or(false);
        *cursor += 1;
        let ops = if succeeded { &t.success } else { &t.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let r = match &op.request {
                Some(Request::RequestRange(r)) => {
                    OpResponse::ResponseRange(self.range_at(r, rev, false)?)
                }
                Some(Request::RequestTxn(t)) => {
                    OpResponse::ResponseTxn(self.read_txn(t, rev, path, cursor)?)
                }
                _ => continue,
            };
            responses.push(ResponseOp { response: Some(r) });
        }
        Ok(TxnResponse {
            header: header(rev),
            succeeded,
            responses,
        })
    }

    /// The published revision.
    pub fn current_revision(&self) -> i64 {
        self.visible_rev
    }

    /// The revision of the last compaction (0 if never compacted).
    pub fn compact_revision(&self) -> i64 {
        self.st.compact_rev
    }

    /// All events with `from_rev <= main <= to_rev` (capped at the published revision), oldest
    /// first, with prev_kv. Stops once `limit` events are collected (0 = no limit), but never in
    /// the middle of a revision.
    pub fn events(
        &self,
        from_rev: i64,
        to_rev: i64,
        limit: usize,
    ) -> Result<Vec<Event>, MvccError> {
        self.readable()?;
        if from_rev < self.st.compact_rev {
            return Err(MvccError::Compacted);
        }
        let to_rev = to_rev.min(self.visible_rev);
        let mut out: Vec<Event> = Vec::new();
        if from_rev > to_rev {
            return Ok(out);
        }
        let cf = cf!(self.db, CF_KV);
        let start = Rev::start_key(from_rev);
        let mut prev_revs = Vec::new();
        let mut last_main = 0;
        for item in self
            .db
            .iterator_cf(&cf, IteratorMode::From(&start, rocksdb::Direction::Forward))
        {
            let (k, v) = item?;
            let (rev, tombstone) = Rev::from_key(&k)?;
            if rev.main > to_rev || (limit > 0 && out.len() >= limit && rev.main != last_main) {
                break;
            }
            last_main = rev.main;
            let mut kv = KeyValue::decode(&*v).map_err(|e| corrupt("kv value", e))?;
            let ty = if tombstone {
                kv.mod_revision = rev.main;
                EventType::Delete
            } else {
                EventType::Put
            };
            let prev = self
                .st
                .index
                .get(kv.key.as_slice())
                .and_then(|ki| ki.live_before(rev));
            prev_revs.push(prev);
            out.push(Event {
                r#type: ty as i32,
                kv: Some(kv),
                prev_kv: None,
            });
        }
        let wanted: Vec<Rev> = prev_revs.iter().flatten().copied().collect();
        let mut values = self.fetch(&wanted, false)?.into_iter();
        for (ev, prev) in out.iter_mut().zip(prev_revs) {
            if prev.is_some() {
                ev.prev_kv = values.next();
            }
        }
        Ok(out)
    }

    /// Granted leases as (id, ttl), by id.
    pub fn leases(&self) -> Vec<(i64, i64)> {
        self.st.leases.iter().map(|(id, l)| (*id, l.ttl)).collect()
    }

    /// Keys currently attached to lease `id`, in key order.
    pub fn lease_keys(&self, id: i64) -> Vec<Vec<u8>> {
        self.st
            .leases
            .get(&id)
            .map(|l| l.keys.iter().map(|k| k.to_vec()).collect())
            .unwrap_or_default()
    }

    /// Active alarm types (deduplicated, ascending).
    pub fn alarms(&self) -> Vec<i32> {
        let mut v: Vec<i32> = self.st.alarms.iter().map(|a| a.alarm).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Active alarms with the member that raised each.
    pub fn alarm_members(&self) -> Vec<AlarmMember> {
        self.st.alarms.clone()
    }

    /// CRC-32 over every kv record with main revision <= `rev` (0 = published revision); records
    /// at or below the compact revision are only those compaction kept, so equal histories give
    /// equal hashes. Returns (hash, compact_revision, hash_revision).
    pub fn hash_kv(&self, rev: i64) -> Result<(u32, i64, i64), MvccError> {
        self.readable()?;
        let rev = if rev <= 0 { self.visible_rev } else { rev };
        if rev > self.visible_rev {
            return Err(MvccError::FutureRev);
        }
        if rev < self.st.compact_rev {
            return Err(MvccError::Compacted);
        }
        let cf = cf!(self.db, CF_KV);
        let mut h = crc32fast::Hasher::new();
        h.update(CF_KV.as_bytes());
        for item in self.db.iterator_cf(&cf, IteratorMode::Start) {
            let (k, v) = item?;
            let (r, _) = Rev::from_key(&k)?;
            if r.main > rev {
                break;
            }
            h.update(&k);
            h.update(&v);
        }
        Ok((h.finalize(), self.st.compact_rev, rev))
    }

    /// Number of live keys at the latest applied revision.
    pub fn key_count(&self) -> usize {
        self.st.live_keys
    }

    /// Size of our column families on disk plus memtables, from RocksDB's properties.
    pub fn db_size_bytes(&self) -> i64 {
        let mut total: u64 = 0;
        for name in CFS {
            let Some(cf) = self.db.cf_handle(name) else {
                continue;
            };
            for prop in [
                "rocksdb.total-sst-files-size",
                "rocksdb.cur-size-all-mem-tables",
            ] {
                if let Ok(Some(n)) = self.db.property_int_value_cf(&cf, prop) {
                    total = total.saturating_add(n);
                }
            }
        }
        i64::try_from(total).unwrap_or(i64::MAX)
    }

    /// Every record of our column families, from one consistent RocksDB snapshot.
    pub fn snapshot(&self) -> Result<Vec<u8>, MvccError> {
        self.snapshot_view().encode()
    }

    /// A consistent read view of the store as of now (a RocksDB snapshot: O(1) to take), which
    /// can be encoded later, on another thread, while writes go on (see [`SnapshotView`]).
    // The one unsafe block of the crate: rust-rocksdb's snapshot borrows the DB, and the view
    // must own it to travel to another thread (no self-referential helper crate is in the
    // workspace; the invariant is two lines, stated below).
    #[allow(unsafe_code)]
    pub fn snapshot_view(&self) -> SnapshotView {
        let db = self.db.clone();
        // SAFETY: the reference is only used by the RocksDB snapshot stored next to the Arc
        // that keeps the DB alive; `SnapshotView` drops the snapshot before that Arc (field
        // order), and the DB behind an Arc never moves.
        let db_ref: &'static DB = unsafe { &*Arc::as_ptr(&db) };
        SnapshotView {
            snap: db_ref.snapshot(),
            db,
        }
    }

    /// Replaces the whole store with a snapshot blob. The blob is fully validated before
    /// anything changes; on success the batch holds "delete all, write blob" and the writer
    /// state is the snapshot's. Readers get `Restoring` until `publish()`.
    pub fn restore(&mut self, data: &[u8], wb: &mut WriteBatch) -> Result<(), MvccError> {
        let sections = crate::snapshot::decode(data)?;
        let mut loader = Loader::default();
        for (name, recs) in &sections {
            if !CFS.contains(&name.as_str()) {
                return Err(corrupt("snapshot has unknown column family", name));
            }
            for (k, v) in recs {
                loader.record(name, k, v)?;
            }
        }
        let st = loader.finish();
        for name in CFS {
            let cf = cf!(self.db, name);
            wb.delete_range_cf(&cf, &[][..], &DELETE_ALL_END[..]);
        }
        for (name, recs) in &sections {
            let cf = cf!(self.db, name.as_str());
            for (k, v) in recs {
                wb.put_cf(&cf, k, v);
            }
        }
        tracing::info!(
            revision = st.current_rev,
            keys = st.live_keys,
            "mvcc state restored from snapshot"
        );
        self.st = st;
        self.pending.clear();
        self.restoring = true;
        Ok(())
    }

    /// Fetches the values at `revs` (live revisions), in order. `with_pending` also looks at
    /// values applied but not yet committed (only the writer may).
    fn fetch(&self, revs: &[Rev], with_pending: bool) -> Result<Vec<KeyValue>, MvccError> {
        let mut out: Vec<Option<KeyValue>> = vec![None; revs.len()];
        let mut disk_idx = Vec::new();
        let mut disk_keys = Vec::new();
        for (i, r) in revs.iter().enumerate() {
            match self.pending.get(r).filter(|_| with_pending) {
                Some(kv) => out[i] = Some(kv.clone()),
                None => {
                    disk_idx.push(i);
                    disk_keys.push(r.to_key(false));
                }
            }
        }
        if !disk_keys.is_empty() {
            let cf = cf!(self.db, CF_KV);
            let got = self.db.batched_multi_get_cf(&cf, &disk_keys, false);
            for (i, res) in disk_idx.into_iter().zip(got) {
                let v = res?.ok_or_else(|| {
                    MvccError::Corrupt(format!("index points at missing revision {:?}", revs[i]))
                })?;
                out[i] = Some(KeyValue::decode(&*v).map_err(|e| corrupt("kv value", e))?);
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// etcd's Range at `cur_rev` (the revision the caller's view is at; header.revision).
    fn range_at(
        &self,
        r: &RangeRequest,
        cur_rev: i64,
        with_pending: bool,
    ) -> Result<RangeResponse, MvccError> {
        if r.revision > cur_rev {
            return Err(MvccError::FutureRev);
        }
        let rev = if r.revision <= 0 { cur_rev } else { r.revision };
        if rev < self.st.compact_rev {
            return Err(MvccError::Compacted);
        }
        let live = self.st.live_in(&KeyRange::new(&r.key, &r.range_end), rev);
        let count = live.len() as i64;
        let mut resp = RangeResponse {
            header: header(cur_rev),
            kvs: Vec::new(),
            more: false,
            count,
        };
        if r.count_only {
            return Ok(resp);
        }
        let sort_order = SortOrder::try_from(r.sort_order).unwrap_or(SortOrder::None);
        let sort_target = SortTarget::try_from(r.sort_target).unwrap_or(SortTarget::Key);
        let filtered = r.min_mod_revision != 0
            || r.max_mod_revision != 0
            || r.min_create_revision != 0
            || r.max_create_revision != 0;
        // Without sorting or filtering, the index order is the answer: fetch limit+1 to learn
        // `more`. Otherwise everything must be fetched first, as etcd does.
        let fetch_n = if sort_order == SortOrder::None && !filtered && r.limit > 0 {
            (r.limit as usize).saturating_add(1).min(live.len())
        } else {
            live.len()
        };
        let revs: Vec<Rev> = live[..fetch_n].iter().map(|(_, r)| *r).collect();
        let mut kvs = self.fetch(&revs, with_pending)?;
        kvs.retain(|kv| {
            (r.max_mod_revision == 0 || kv.mod_revision <= r.max_mod_revision)
                && (r.min_mod_revision == 0 || kv.mod_revision >= r.min_mod_revision)
                && (r.max_create_revision == 0 || kv.create_revision <= r.max_create_revision)
                && (r.min_create_revision == 0 || kv.create_revision >= r.min_create_revision)
        });
        let order = match (sort_order, sort_target) {
            (SortOrder::None, SortTarget::Key) => SortOrder::None,
            (SortOrder::None, _) => SortOrder::Ascend,
            (o, _) => o,
        };
        if order != SortOrder::None {
            let key = |a: &KeyValue, b: &KeyValue| match sort_target {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            };
            if order == SortOrder::Descend {
                kvs.sort_by(|a, b| key(b, a));
            } else {
                kvs.sort_by(key);
            }
        }
        if r.limit > 0 && kvs.len() > r.limit as usize {
            kvs.truncate(r.limit as usize);
            resp.more = true;
        }
        if r.keys_only {
            for kv in &mut kvs {
                kv.value = Vec::new();
            }
        }
        resp.kvs = kvs;
        Ok(resp)
    }

    /// etcd's `compareToPath`: the branch each txn takes, pre-order, all evaluated against the
    /// state at `rev` (before the txn runs).
    fn txn_path(
        &self,
        t: &TxnRequest,
        rev: i64,
        with_pending: bool,
        path: &mut Vec<bool>,
    ) -> Result<(), MvccError> {
        let mut ok = true;
        for c in &t.compare {
            let live = self.st.live_in(&KeyRange::new(&c.key, &c.range_end), rev);
            let revs: Vec<Rev> = live.iter().map(|(_, r)| *r).collect();
            let kvs = self.fetch(&revs, with_pending)?;
            if !txn::compare_all(c, &kvs) {
                ok = false;
                break;
            }
        }
        path.push(ok);
        let ops = if ok { &t.success } else { &t.failure };
        for op in ops {
            if let Some(Request::RequestTxn(t)) = &op.request {
                self.txn_path(t, rev, with_pending, path)?;
            }
        }
        Ok(())
    }

    /// etcd's `checkRequests` along the chosen path: puts' leases exist; ignore_* keys exist.
    fn check_path(
        &self,
        t: &TxnRequest,
        path: &[bool],
        cursor: &mut usize,
    ) -> Result<(), MvccError> {
        let ok = path.get(*cursor).copied().unwrap_or(false);
        *cursor += 1;
        for op in if ok { &t.success } else { &t.failure } {
            match &op.request {
                Some(Request::RequestPut(p)) => self.check_put_state(p)?,
                Some(Request::RequestTxn(t)) => self.check_path(t, path, cursor)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn check_put_state(&self, p: &PutRequest) -> Result<(), MvccError> {
        if (p.ignore_value || p.ignore_lease) && self.st.latest(&p.key).is_none() {
            return Err(MvccError::KeyNotFound);
        }
        if p.lease != 0 && !self.st.leases.contains_key(&p.lease) {
            return Err(MvccError::LeaseNotFound);
        }
        Ok(())
    }
}

/// One request's application: the revision it writes at and the changes so far.
struct Writer<'a> {
    m: &'a mut Mvcc,
    db: &'a DB,
    wb: &'a mut WriteBatch,
    main: i64,
    sub: i64,
    events: Vec<Event>,
}

impl Writer<'_> {
    /// The revision reads inside this request see: including its own writes so far.
    fn read_rev(&self) -> i64 {
        if self.sub > 0 {
            self.main
        } else {
            self.main - 1
        }
    }

    fn next_rev(&mut self) -> Rev {
        let r = Rev::new(self.main, self.sub);
        self.sub += 1;
        r
    }

    fn apply(&mut self, req: &InternalRequest) -> Result<IResp, MvccError> {
        match &req.request {
            Some(IReq::Put(p)) => {
                txn::check_put(p)?;
                if self.m.st.nospace() {
                    return Err(MvccError::NoSpace);
                }
                self.m.check_put_state(p)?;
                Ok(IResp::Put(self.put(p)?))
            }
            Some(IReq::DeleteRange(d)) => {
                txn::check_delete(d)?;
                Ok(IResp::DeleteRange(self.delete_range(d)?))
            }
            Some(IReq::Txn(t)) => Ok(IResp::Txn(self.txn(t)?)),
            Some(IReq::Compaction(c)) => Ok(IResp::Compaction(self.compact(c)?)),
            Some(IReq::LeaseGrant(g)) => Ok(IResp::LeaseGrant(self.lease_grant(g)?)),
            Some(IReq::LeaseRevoke(r)) => Ok(IResp::LeaseRevoke(self.lease_revoke(r)?)),
            Some(IReq::Alarm(a)) => Ok(IResp::Alarm(self.alarm(a)?)),
            Some(IReq::Barrier(_)) => Ok(IResp::Barrier(Barrier {})),
            None => Err(MvccError::EmptyRequest),
        }
    }

    fn value_at(&self, rev: Rev) -> Result<KeyValue, MvccError> {
        let mut v = self.m.fetch(&[rev], true)?;
        v.pop()
            .ok_or_else(|| MvccError::Corrupt(format!("missing revision {rev:?}")))
    }

    fn attach(&mut self, key: &[u8], old_lease: i64, new_lease: i64) {
        if old_lease == new_lease {
            return;
        }
        if new_lease != 0 {
            self.m.st.lease_of.insert(key.into(), new_lease);
        } else {
            self.m.st.lease_of.remove(key);
        }
        if old_lease != 0 {
            if let Some(l) = self.m.st.leases.get_mut(&old_lease) {
                l.keys.remove(key);
            }
        }
        if new_lease != 0 {
            if let Some(l) = self.m.st.leases.get_mut(&new_lease) {
                l.keys.insert(key.into());
            }
        }
    }

    /// A put whose checks have passed.
    ///
    /// The previous value is read from RocksDB only when something needs its bytes: the
    /// request's `prev_kv` or `ignore_value`, or `prev_kv` in events (see
    /// `set_events_prev_kv`). Otherwise create_revision and version come from the index and
    /// the old lease from `lease_of`, which is the common case and saves a point lookup per put.
    fn put(&mut self, p: &PutRequest) -> Result<PutResponse, MvccError> {
        let (latest, live_gen) = match self.m.st.index.get(p.key.as_slice()) {
            Some(ki) => (ki.latest(), ki.live_gen()),
            None => (None, None),
        };
        let need_prev = p.prev_kv || p.ignore_value || self.m.events_prev_kv;
        let prev = match latest {
            Some(r) if need_prev => Some(self.value_at(r)?),
            _ => None,
        };
        let old_lease = match &prev {
            Some(k) => k.lease,
            None if latest.is_some() => self
                .m
                .st
                .lease_of
                .get(p.key.as_slice())
                .copied()
                .unwrap_or(0),
            None => 0,
        };
        let (created, prev_version) = match (&prev, live_gen) {
            (Some(k), _) => (Some(k.create_revision), k.version),
            (None, Some((c, v))) if latest.is_some() => (Some(c), v),
            _ => (None, 0),
        };
        let rev = self.next_rev();
        let kv = KeyValue {
            key: p.key.clone(),
            create_revision: created.unwrap_or(rev.main),
            mod_revision: rev.main,
            version: prev_version + 1,
            value: match (&prev, p.ignore_value) {
                (Some(k), true) => k.value.clone(),
                _ => p.value.clone(),
            },
            lease: if p.ignore_lease && latest.is_some() {
                old_lease
            } else {
                p.lease
            },
        };
        let cf = cf!(self.db, CF_KV);
        self.wb.put_cf(&cf, rev.to_key(false), kv.encode_to_vec());
        let st = &mut self.m.st;
        match st.index.get_mut(p.key.as_slice()) {
            Some(ki) => {
                if ki.latest().is_none() {
                    st.live_keys += 1;
                }
                ki.put(rev);
            }
            None => {
                st.live_keys += 1;
                st.index
                    .insert(p.key.clone().into_boxed_slice(), KeyIndex::new(rev));
            }
        }
        self.attach(&p.key, old_lease, kv.lease);
        self.m.pending.insert(rev, kv.clone());
        self.events.push(Event {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv: prev.clone(),
        });
        Ok(PutResponse {
            header: header(rev.main),
            prev_kv: if p.prev_kv { prev } else { None },
        })
    }

    fn delete_range(&mut self, d: &DeleteRangeRequest) -> Result<DeleteRangeResponse, MvccError> {
        let live: Vec<(Vec<u8>, Rev)> = self
            .m
            .st
            .live_in(&KeyRange::new(&d.key, &d.range_end), i64::MAX)
            .into_iter()
            .map(|(k, r)| (k.to_vec(), r))
            .collect();
        let revs: Vec<Rev> = live.iter().map(|(_, r)| *r).collect();
        let prevs = self.m.fetch(&revs, true)?;
        let cf = cf!(self.db, CF_KV);
        for ((key, _), prev) in live.iter().zip(&prevs) {
            let rev = self.next_rev();
            let tomb = KeyValue {
                key: key.clone(),
                mod_revision: rev.main,
                ..Default::default()
            };
            self.wb.put_cf(&cf, rev.to_key(true), tomb.encode_to_vec());
            let st = &mut self.m.st;
            if let Some(ki) = st.index.get_mut(key.as_slice()) {
                ki.tombstone(rev);
                st.live_keys -= 1;
            }
            self.attach(key, prev.lease, 0);
            self.events.push(Event {
                r#type: EventType::Delete as i32,
                kv: Some(tomb),
                prev_kv: Some(prev.clone()),
            });
        }
        Ok(DeleteRangeResponse {
            header: header(self.read_rev()),
            deleted: live.len() as i64,
            prev_kvs: if d.prev_kv { prevs } else { Vec::new() },
        })
    }

    fn txn(&mut self, t: &TxnRequest) -> Result<TxnResponse, MvccError> {
        txn::check_txn(t)?;
        if self.m.st.nospace() && txn::has_puts(t) {
            return Err(MvccError::NoSpace);
        }
        let mut path = Vec::new();
        self.m.txn_path(t, self.read_rev(), true, &mut path)?;
        self.m.check_path(t, &path, &mut 0)?;
        let mut resp = self.exec_txn(t, &path, &mut 0)?;
        resp.header = header(self.read_rev());
        Ok(resp)
    }

    fn exec_txn(
        &mut self,
        t: &TxnRequest,
        path: &[bool],
        cursor: &mut usize,
    ) -> Result<TxnResponse, MvccError> {
        let succeeded = path.get(*cursor).copied().unwrap_or(false);
        *cursor += 1;
        let ops = if succeeded { &t.success } else { &t.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let r = match &op.request {
                Some(Request::RequestRange(r)) => {
                    OpResponse::ResponseRange(self.m.range_at(r, self.read_rev(), true)?)
                }
                Some(Request::RequestPut(p)) => OpResponse::ResponsePut(self.put(p)?),
                Some(Request::RequestDeleteRange(d)) => {
                    OpResponse::ResponseDeleteRange(self.delete_range(d)?)
                }
                Some(Request::RequestTxn(t)) => {
                    let mut r = self.exec_txn(t, path, cursor)?;
                    r.header = header(self.read_rev());
                    OpResponse::ResponseTxn(r)
                }
                None => continue,
            };
            responses.push(ResponseOp { response: Some(r) });
        }
        Ok(TxnResponse {
            header: None,
            succeeded,
            responses,
        })
    }

    fn compact(&mut self, c: &CompactionRequest) -> Result<CompactionResponse, MvccError> {
        let at = c.revision;
        let st = &mut self.m.st;
        if at > st.current_rev {
            return Err(MvccError::FutureRev);
        }
        if at <= st.compact_rev {
            return Err(MvccError::Compacted);
        }
        let mut dropped = Vec::new();
        st.index.retain(|_, ki| !ki.compact(at, &mut dropped));
        st.compact_rev = at;
        let kv_cf = cf!(self.db, CF_KV);
        for (rev, tombstone) in &dropped {
            self.wb.delete_cf(&kv_cf, rev.to_key(*tombstone));
            self.m.pending.remove(rev);
        }
        let meta = cf!(self.db, CF_META);
        self.wb.put_cf(&meta, META_COMPACT_REV, at.to_be_bytes());
        tracing::debug!(revision = at, dropped = dropped.len(), "compacted");
        Ok(CompactionResponse {
            header: header(self.read_rev()),
        })
    }

    fn lease_grant(&mut self, g: &LeaseGrantRequest) -> Result<LeaseGrantResponse, MvccError> {
        if self.m.st.nospace() {
            return Err(MvccError::NoSpace);
        }
        if g.id == 0 {
            return Err(MvccError::LeaseIdRequired);
        }
        if g.ttl > MAX_LEASE_TTL {
            return Err(MvccError::LeaseTtlTooLarge);
        }
        if self.m.st.leases.contains_key(&g.id) {
            return Err(MvccError::LeaseExists);
        }
        self.m.st.leases.insert(
            g.id,
            LeaseEntry {
                ttl: g.ttl,
                keys: BTreeSet::new(),
            },
        );
        let cf = cf!(self.db, CF_LEASE);
        self.wb.put_cf(&cf, g.id.to_be_bytes(), g.ttl.to_be_bytes());
        Ok(LeaseGrantResponse {
            header: header(self.read_rev()),
            id: g.id,
            ttl: g.ttl,
            error: String::new(),
        })
    }

    fn lease_revoke(&mut self, r: &LeaseRevokeRequest) -> Result<LeaseRevokeResponse, MvccError> {
        let Some(lease) = self.m.st.leases.get(&r.id) else {
            return Err(MvccError::LeaseNotFound);
        };
        let keys: Vec<Box<[u8]>> = lease.keys.iter().cloned().collect();
        for key in keys {
            self.delete_range(&DeleteRangeRequest {
                key: key.into_vec(),
                ..Default::default()
            })?;
        }
        self.m.st.leases.remove(&r.id);
        let cf = cf!(self.db, CF_LEASE);
        self.wb.delete_cf(&cf, r.id.to_be_bytes());
        Ok(LeaseRevokeResponse {
            header: header(self.read_rev()),
        })
    }

    fn alarm(&mut self, a: &AlarmRequest) -> Result<AlarmResponse, MvccError> {
        let st = &mut self.m.st;
        let member = AlarmMember {
            member_id: a.member_id,
            alarm: a.alarm,
        };
        let mut alarms = Vec::new();
        let mut changed = false;
        match AlarmAction::try_from(a.action).unwrap_or(AlarmAction::Get) {
            AlarmAction::Get => {
                alarms = st
                    .alarms
                    .iter()
                    .filter(|m| a.alarm == AlarmType::None as i32 || m.alarm == a.alarm)
                    .cloned()
                    .collect();
            }
            AlarmAction::Activate => {
                if a.alarm != AlarmType::None as i32 {
                    if !st.alarms.contains(&member) {
                        st.alarms.push(member);
                        st.alarms.sort_by_key(|m| (m.member_id, m.alarm));
                        changed = true;
                    }
                    alarms.push(member);
                }
            }
            AlarmAction::Deactivate => {
                if let Some(i) = st.alarms.iter().position(|m| *m == member) {
                    alarms.push(st.alarms.remove(i));
                    changed = true;
                }
            }
        }
        if changed {
            let encoded = encode_alarms(&st.alarms);
            let cf = cf!(self.db, CF_META);
            self.wb.put_cf(&cf, META_ALARMS, encoded);
        }
        Ok(AlarmResponse {
            header: header(self.read_rev()),
            alarms,
        })
    }
}
