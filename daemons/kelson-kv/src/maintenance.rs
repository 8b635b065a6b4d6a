//! The etcd `Maintenance` service: Status, Snapshot, Defragment, Alarm, MoveLeader, Hash, HashKV,
//! and the backend quota.
//!
//! Snapshot stream format (what `etcdctl snapshot save` writes to disk): the magic
//! `KELSONKV-SNAPSHOT-1\n`, the MVCC snapshot bytes, then the SHA-256 of everything before it —
//! etcd likewise appends a SHA-256 to the database it streams. `kelsonctl kv snapshot restore`
//! checks both before building a new data directory from it.
//!
//! Quota: like etcd, a write whose cost would take the backend over `--quota-backend-bytes`
//! raises the NOSPACE alarm through Raft and is refused; while the alarm is active the state
//! machine refuses every write that adds data (deletes and compaction still work).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use kelson_etcdpb::internal::{
    internal_request::Request as IReq, internal_response::Response as IResp,
};
use kelson_etcdpb::maintenance_server::Maintenance;
use kelson_etcdpb::*;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use crate::errors::{
    mvcc_status, raft_status, status_for_message, ERR_BAD_LEADER_TRANSFEREE, ERR_NOT_LEADER,
    ERR_NO_SPACE,
};
use crate::store::Shared;

pub const SNAPSHOT_MAGIC: &[u8] = b"KELSONKV-SNAPSHOT-1\n";
/// The etcd API version this server reports (the protocol level it implements). 3.5.13 is the
/// first 3.5 release whose RequestProgress answers come after the events they cover
/// (etcd-io/etcd#15220), which kelson-kv's watch does; kube-apiserver (and kelson-apistorage)
/// trust progress notifications for consistent reads from their watch cache only from there.
pub const ETCD_VERSION: &str = "3.5.13";
const SNAPSHOT_CHUNK: usize = 64 * 1024;

/// Wraps an MVCC snapshot in the on-disk snapshot format: magic, 8-byte little-endian length,
/// the MVCC snapshot, zero padding to a multiple of 512 bytes, then the SHA-256 of everything
/// before it. The padding matters: `etcdctl snapshot save` accepts a stream only if its size is
/// `512·n + 32` (a bbolt file plus its checksum).
pub fn encode_snapshot(mvcc_snapshot: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SNAPSHOT_MAGIC.len() + 8 + mvcc_snapshot.len() + 512 + 32);
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&(mvcc_snapshot.len() as u64).to_le_bytes());
    out.extend_from_slice(mvcc_snapshot);
    out.resize(out.len().div_ceil(512) * 512, 0);
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    out
}

/// Checks magic, checksum and length; returns the MVCC snapshot bytes.
pub fn decode_snapshot(data: &[u8]) -> Result<&[u8], String> {
    if data.len() < SNAPSHOT_MAGIC.len() + 8 + 32 || !data.starts_with(SNAPSHOT_MAGIC) {
        return Err("not a kelson-kv snapshot (bad magic); etcd bbolt snapshots cannot be restored into kelson-kv".into());
    }
    let (body, sum) = data.split_at(data.len() - 32);
    if Sha256::digest(body).as_slice() != sum {
        return Err("snapshot checksum mismatch: the file is truncated or corrupt".into());
    }
    let rest = &body[SNAPSHOT_MAGIC.len()..];
    let len = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes")) as usize;
    rest.get(8..8 + len)
        .ok_or_else(|| "snapshot length field exceeds the file".to_string())
}

/// A recent reading of the backend size, so that a write far below the quota does not pay for
/// four RocksDB property lookups under the MVCC read lock (2 % of the server's CPU per put in
/// the put-256 profile). It only ever admits: a write that might come near the quota always
/// re-reads the real size, so the refusal (and the NOSPACE alarm) is exactly as before. Growth
/// since the reading is bounded by charging every admitted write `GROWTH_FACTOR` times its
/// cost (a put lands in the raft log and in the MVCC, plus keys and framing).
#[derive(Default)]
pub struct QuotaEstimate {
    inner: parking_lot::Mutex<Option<QuotaReading>>,
}

struct QuotaReading {
    at: std::time::Instant,
    size: u64,
    admitted: u64,
}

impl QuotaEstimate {
    /// How long a reading may be reused.
    const MAX_AGE: Duration = Duration::from_millis(100);
    /// Backend bytes a write may add per byte of request, at most (an over-estimate).
    const GROWTH_FACTOR: u64 = 4;

    /// True if `cost` more bytes certainly fit: the last reading is fresh and, with everything
    /// admitted since charged at `GROWTH_FACTOR`, stays below 7/8 of the quota.
    fn admits(&self, quota: u64, cost: u64) -> bool {
        let mut g = self.inner.lock();
        let Some(r) = g.as_mut() else {
            return false;
        };
        if r.at.elapsed() > Self::MAX_AGE {
            return false;
        }
        let charged = r
            .admitted
            .saturating_add(cost.saturating_mul(Self::GROWTH_FACTOR));
        if r.size.saturating_add(charged) > quota - quota / 8 {
            return false;
        }
        r.admitted = charged;
        true
    }

    fn refresh(&self, size: u64) {
        *self.inner.lock() = Some(QuotaReading {
            at: std::time::Instant::now(),
            size,
            admitted: 0,
        });
    }
}

/// Refuses a write that would exceed the quota, raising the NOSPACE alarm once.
pub async fn check_quota(shared: &Shared, cost: usize) -> Result<(), Status> {
    let quota = shared.cfg.quota_backend_bytes;
    if quota == 0 {
        return Ok(());
    }
    if shared.quota_estimate.admits(quota, cost as u64) {
        return Ok(());
    }
    let (size, active) = {
        let m = shared.mvcc.read();
        (
            m.db_size_bytes().max(0) as u64,
            m.alarms().contains(&(AlarmType::Nospace as i32)),
        )
    };
    shared.quota_estimate.refresh(size);
    if size + cost as u64 <= quota {
        return Ok(());
    }
    if !active {
        kelson_runtime::log_event!(
            tracing::Level::ERROR,
            kelson_runtime::events::KV_QUOTA_ALARM,
            db_size = size,
            quota,
            "backend quota exceeded; raising NOSPACE alarm"
        );
        let req = AlarmRequest {
            action: alarm_request::AlarmAction::Activate as i32,
            member_id: shared.node().id(),
            alarm: AlarmType::Nospace as i32,
        };
        let _ = shared.propose(IReq::Alarm(req)).await;
    }
    Err(status_for_message(ERR_NO_SPACE))
}

pub struct MaintenanceService {
    shared: Arc<Shared>,
}

impl MaintenanceService {
    pub fn new(shared: Arc<Shared>) -> Self {
        MaintenanceService { shared }
    }
    fn header(&self) -> Option<ResponseHeader> {
        Some(
            self.shared
                .header(self.shared.mvcc.read().current_revision()),
        )
    }
}

/// Runs RocksDB's full compaction of every column family (the analogue of bbolt defrag).
pub fn defragment(db: &rocksdb::DB) {
    for cf in kelson_mvcc::CFS.iter().chain(kelson_raft::CFS.iter()) {
        if let Some(h) = db.cf_handle(cf) {
            db.compact_range_cf(h, None::<&[u8]>, None::<&[u8]>);
        }
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        request: Request<AlarmRequest>,
    ) -> Result<Response<AlarmResponse>, Status> {
        let req = request.into_inner();
        if req.action == alarm_request::AlarmAction::Get as i32 {
            let m = self.shared.mvcc.read();
            let member_id = self.shared.node().id();
            let alarms = m
                .alarms()
                .into_iter()
                .filter(|a| req.alarm == AlarmType::None as i32 || *a == req.alarm)
                .map(|alarm| AlarmMember { member_id, alarm })
                .collect();
            return Ok(Response::new(AlarmResponse {
                header: Some(self.shared.header(m.current_revision())),
                alarms,
            }));
        }
        match self.shared.propose(IReq::Alarm(req)).await?.response {
            Some(IResp::Alarm(mut r)) => {
                r.header = self.header();
                Ok(Response::new(r))
            }
            _ => Err(Status::internal("etcdserver: unexpected apply result")),
        }
    }

    async fn status(&self, _r: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let st = self.shared.node().status();
        let (db_size, errors) = {
            let m = self.shared.mvcc.read();
            let errors = m
                .alarms()
                .into_iter()
                .map(|a| match AlarmType::try_from(a) {
                    Ok(AlarmType::Nospace) => {
                        "memberID:".to_string() + &format!("{:x} alarm:NOSPACE", st.id)
                    }
                    Ok(AlarmType::Corrupt) => format!("memberID:{:x} alarm:CORRUPT", st.id),
                    _ => format!("memberID:{:x} alarm:{a}", st.id),
                })
                .collect::<Vec<_>>();
            (m.db_size_bytes(), errors)
        };
        Ok(Response::new(StatusResponse {
            header: self.header(),
            version: ETCD_VERSION.into(),
            db_size,
            leader: st.leader_id,
            raft_index: st.raft_index,
            raft_term: st.term,
            raft_applied_index: st.applied_index,
            errors,
            db_size_in_use: db_size,
            is_learner: st.is_learner,
            storage_version: String::new(),
            db_size_quota: self.shared.cfg.quota_backend_bytes as i64,
            downgrade_info: None,
        }))
    }

    async fn defragment(
        &self,
        _r: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        let db = self.shared.db.clone();
        tokio::task::spawn_blocking(move || defragment(&db))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(DefragmentResponse {
            header: self.header(),
        }))
    }

    async fn hash(&self, _r: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        let (hash, _, _) = self
            .shared
            .mvcc
            .read()
            .hash_kv(0)
            .map_err(|e| mvcc_status(&e))?;
        Ok(Response::new(HashResponse {
            header: self.header(),
            hash,
        }))
    }

    async fn hash_kv(&self, r: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        let rev = r.into_inner().revision;
        let m = self.shared.mvcc.read();
        let (hash, compact_revision, hash_revision) =
            m.hash_kv(rev).map_err(|e| mvcc_status(&e))?;
        Ok(Response::new(HashKvResponse {
            header: Some(self.shared.header(m.current_revision())),
            hash,
            compact_revision,
            hash_revision,
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        _r: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let mvcc = self.shared.mvcc.clone();
        let data = tokio::task::spawn_blocking(move || mvcc.read().snapshot())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| mvcc_status(&e))?;
        let data = encode_snapshot(&data);
        let header = self.header();
        let total = data.len();
        let out = async_stream::stream! {
            let mut sent = 0usize;
            for chunk in data.chunks(SNAPSHOT_CHUNK) {
                sent += chunk.len();
                yield Ok(SnapshotResponse {
                    header,
                    remaining_bytes: (total - sent) as u64,
                    blob: chunk.to_vec(),
                    version: ETCD_VERSION.into(),
                });
            }
        };
        Ok(Response::new(Box::pin(out)))
    }

    async fn move_leader(
        &self,
        r: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        let target = r.into_inner().target_id;
        let node = self.shared.node();
        let st = node.status();
        if st.leader_id != st.id {
            return Err(status_for_message(ERR_NOT_LEADER));
        }
        if !node
            .members()
            .iter()
            .any(|m| m.id == target && !m.is_learner)
        {
            return Err(status_for_message(ERR_BAD_LEADER_TRANSFEREE));
        }
        tokio::time::timeout(Duration::from_secs(10), node.transfer_leader(target))
            .await
            .map_err(|_| status_for_message(crate::errors::ERR_TIMEOUT))?
            .map_err(|e| raft_status(&e))?;
        Ok(Response::new(MoveLeaderResponse {
            header: self.header(),
        }))
    }

    async fn downgrade(
        &self,
        _r: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(Status::unimplemented(
            "etcdserver: cluster version downgrade is not supported by kelson-kv",
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    #[test]
    fn quota_estimate_only_admits_far_below_the_quota_with_a_fresh_reading() {
        let q = QuotaEstimate::default();
        // No reading yet: the caller must read the real size.
        assert!(!q.admits(1000, 1));
        q.refresh(500);
        // 500 + 4·100 = 900 > 875 (7/8 of 1000): too close, re-read.
        assert!(!q.admits(1000, 100));
        // 500 + 4·50 = 700: admitted, and charged.
        assert!(q.admits(1000, 50));
        // 700 + 4·50 = 900: the earlier admission counts.
        assert!(!q.admits(1000, 50));
        // A stale reading admits nothing.
        q.refresh(0);
        if let Some(r) = q.inner.lock().as_mut() {
            let past = Instant::now().checked_sub(QuotaEstimate::MAX_AGE * 2);
            r.at = past.expect("the monotonic clock is past 200 ms");
        }
        assert!(!q.admits(1000, 1));
    }

    use super::*;

    #[test]
    fn snapshot_framing_detects_corruption() {
        let enc = encode_snapshot(b"state");
        assert_eq!(decode_snapshot(&enc).unwrap(), b"state");
        let mut bad = enc.clone();
        bad[SNAPSHOT_MAGIC.len()] ^= 1;
        assert!(decode_snapshot(&bad).unwrap_err().contains("checksum"));
        assert!(decode_snapshot(b"bolt").unwrap_err().contains("magic"));
        assert!(decode_snapshot(&enc[..enc.len() - 1]).is_err());
        // etcdctl's `snapshot save` requires a bbolt-like size: 512·n + 32.
        assert_eq!(enc.len() % 512, 32);
    }
}
