//! Leases: the replicated lease table lives in the MVCC (grant/revoke are Raft entries); the
//! expiry clock lives here, in memory, on every member.
//!
//! As in etcd, only the leader's clock counts: the leader refreshes every lease's deadline when it
//! takes office (so a leader change never expires a lease early), answers KeepAlive and
//! TimeToLive, and proposes a `LeaseRevoke` through Raft when a deadline passes — the revoke then
//! deletes the attached keys in one revision on every member. Followers forward KeepAlive and
//! TimeToLive to the leader's client URL.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use kelson_etcdpb::internal::{
    internal_request::Request as IReq, internal_response::Response as IResp,
};
use kelson_etcdpb::lease_server::Lease;
use kelson_etcdpb::*;
use parking_lot::Mutex;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::errors::{status_for_message, ERR_LEASE_NOT_FOUND, ERR_LEASE_TTL_TOO_LARGE};
use crate::leader::LeaderClient;
use crate::store::Shared;

/// etcd's MaxLeaseTTL.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

#[derive(Debug, Clone, Copy)]
struct Deadline {
    ttl: i64,
    expiry: Instant,
}

/// The in-memory expiry clock of every known lease.
#[derive(Default)]
pub struct LeaseClock {
    leases: Mutex<HashMap<i64, Deadline>>,
    revoking: Mutex<HashSet<i64>>,
}

impl LeaseClock {
    pub fn new(existing: &[(i64, i64)]) -> Arc<Self> {
        let clock = LeaseClock::default();
        clock.reset(existing);
        Arc::new(clock)
    }

    fn deadline(ttl: i64) -> Instant {
        Instant::now() + Duration::from_secs(ttl.max(0) as u64)
    }

    pub fn granted(&self, id: i64, ttl: i64) {
        self.leases.lock().insert(
            id,
            Deadline {
                ttl,
                expiry: Self::deadline(ttl),
            },
        );
    }

    pub fn revoked(&self, id: i64) {
        self.leases.lock().remove(&id);
        self.revoking.lock().remove(&id);
    }

    /// Replaces the table (after a snapshot restore) with fresh deadlines.
    pub fn reset(&self, leases: &[(i64, i64)]) {
        let mut m = self.leases.lock();
        m.clear();
        for &(id, ttl) in leases {
            m.insert(
                id,
                Deadline {
                    ttl,
                    expiry: Self::deadline(ttl),
                },
            );
        }
    }

    /// A new leader extends every lease by its full TTL (etcd's `Promote`).
    pub fn refresh_all(&self) {
        for d in self.leases.lock().values_mut() {
            d.expiry = Self::deadline(d.ttl);
        }
        self.revoking.lock().clear();
    }

    /// Renews a lease; returns its TTL, or None if unknown.
    pub fn keep_alive(&self, id: i64) -> Option<i64> {
        let mut m = self.leases.lock();
        let d = m.get_mut(&id)?;
        d.expiry = Self::deadline(d.ttl);
        Some(d.ttl)
    }

    /// (granted TTL, remaining seconds) of a lease.
    pub fn remaining(&self, id: i64) -> Option<(i64, i64)> {
        let m = self.leases.lock();
        let d = m.get(&id)?;
        let left = d.expiry.saturating_duration_since(Instant::now());
        Some((d.ttl, left.as_secs_f64().ceil() as i64))
    }

    /// Expired leases not yet being revoked; marks them as being revoked.
    fn take_expired(&self) -> Vec<i64> {
        let now = Instant::now();
        let m = self.leases.lock();
        let mut revoking = self.revoking.lock();
        let expired: Vec<i64> = m
            .iter()
            .filter(|(id, d)| d.expiry <= now && !revoking.contains(*id))
            .map(|(id, _)| *id)
            .collect();
        revoking.extend(expired.iter().copied());
        expired
    }

    fn revoke_failed(&self, id: i64) {
        self.revoking.lock().remove(&id);
    }
}

/// The leader's expiry loop: refresh on promotion, revoke on expiry. Runs until `shutdown`.
pub async fn run_expiry(shared: Arc<Shared>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    // Promotion is what matters here; the full status would wake this loop on every commit.
    let mut status = shared.node().watch_role();
    let mut was_leader = false;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = status.changed() => {}
            _ = tick.tick() => {}
        }
        let st = shared.node().status();
        let leader = st.leader_id == st.id && st.id != 0;
        if leader && !was_leader {
            shared.leases.refresh_all();
        }
        was_leader = leader;
        if !leader {
            continue;
        }
        for id in shared.leases.take_expired() {
            let s = shared.clone();
            tokio::spawn(async move {
                tracing::info!(lease = id, "lease expired; revoking");
                match s
                    .propose(IReq::LeaseRevoke(LeaseRevokeRequest { id }))
                    .await
                {
                    Ok(_) => {}
                    Err(e) if e.message() == ERR_LEASE_NOT_FOUND => s.leases.revoked(id),
                    Err(e) => {
                        tracing::warn!(lease = id, error = %e, "lease revoke failed; will retry");
                        s.leases.revoke_failed(id);
                    }
                }
            });
        }
    }
}

pub struct LeaseService {
    shared: Arc<Shared>,
    leader: Arc<LeaderClient>,
}

impl LeaseService {
    pub fn new(shared: Arc<Shared>, leader: Arc<LeaderClient>) -> Self {
        LeaseService { shared, leader }
    }

    /// etcd's minimum TTL: 1.5 election timeouts, rounded up to whole seconds.
    fn min_ttl(&self) -> i64 {
        let ms = self.shared.cfg.election_timeout * 3 / 2;
        ms.div_ceil(1000) as i64
    }

    fn is_leader(&self) -> bool {
        let st = self.shared.node().status();
        st.leader_id != 0 && st.leader_id == st.id
    }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let mut req = request.into_inner();
        if req.ttl > MAX_LEASE_TTL {
            return Err(status_for_message(ERR_LEASE_TTL_TOO_LARGE));
        }
        req.ttl = req.ttl.max(self.min_ttl());
        if req.id == 0 {
            // Positive, non-zero, unique with overwhelming probability; a collision is answered
            // by the state machine with "lease already exists", which the client may retry.
            req.id = (rand::random::<u64>() >> 2) as i64 | 1;
        }
        crate::maintenance::check_quota(&self.shared, 64).await?;
        match self.shared.propose(IReq::LeaseGrant(req)).await?.response {
            Some(IResp::LeaseGrant(mut r)) => {
                r.header = Some(
                    self.shared
                        .header(r.header.map(|h| h.revision).unwrap_or(0)),
                );
                Ok(Response::new(r))
            }
            _ => Err(Status::internal("etcdserver: unexpected apply result")),
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let req = request.into_inner();
        match self.shared.propose(IReq::LeaseRevoke(req)).await?.response {
            Some(IResp::LeaseRevoke(mut r)) => {
                r.header = Some(
                    self.shared
                        .header(r.header.map(|h| h.revision).unwrap_or(0)),
                );
                Ok(Response::new(r))
            }
            _ => Err(Status::internal("etcdserver: unexpected apply result")),
        }
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut inbound = request.into_inner();
        let shared = self.shared.clone();
        let leader = self.leader.clone();
        let this_is_leader = move || {
            let st = shared.node().status();
            st.leader_id != 0 && st.leader_id == st.id
        };
        let shared = self.shared.clone();
        let out = async_stream::try_stream! {
            while let Some(req) = inbound.next().await {
                let req = req?;
                if this_is_leader() {
                    // etcd answers an unknown lease with TTL 0, not an error.
                    let ttl = shared.leases.keep_alive(req.id).unwrap_or(0);
                    let rev = shared.mvcc.read().current_revision();
                    yield LeaseKeepAliveResponse { header: Some(shared.header(rev)), id: req.id, ttl };
                } else {
                    let resp = leader.keep_alive(&shared, req.id).await?;
                    yield resp;
                }
            }
        };
        Ok(Response::new(Box::pin(out)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let req = request.into_inner();
        if !self.is_leader() {
            return self
                .leader
                .time_to_live(&self.shared, req)
                .await
                .map(Response::new);
        }
        let Some((granted, remaining)) = self.shared.leases.remaining(req.id) else {
            // etcd answers an unknown (expired or revoked) lease with TTL -1, not an error;
            // etcdctl prints "lease ... already expired" for it.
            let rev = self.shared.mvcc.read().current_revision();
            return Ok(Response::new(LeaseTimeToLiveResponse {
                header: Some(self.shared.header(rev)),
                id: req.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            }));
        };
        let (keys, rev) = {
            let m = self.shared.mvcc.read();
            let keys = if req.keys {
                m.lease_keys(req.id)
            } else {
                Vec::new()
            };
            (keys, m.current_revision())
        };
        Ok(Response::new(LeaseTimeToLiveResponse {
            header: Some(self.shared.header(rev)),
            id: req.id,
            ttl: remaining,
            granted_ttl: granted,
            keys,
        }))
    }

    async fn lease_leases(
        &self,
        _request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        self.shared.read_barrier(false).await?;
        let m = self.shared.mvcc.read();
        let leases = m
            .leases()
            .into_iter()
            .map(|(id, _)| LeaseStatus { id })
            .collect();
        Ok(Response::new(LeaseLeasesResponse {
            header: Some(self.shared.header(m.current_revision())),
            leases,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_expires_and_refreshes() {
        let c = LeaseClock::new(&[(1, 0), (2, 100)]);
        assert_eq!(c.take_expired(), vec![1]);
        assert!(
            c.take_expired().is_empty(),
            "an expiring lease is handed out once"
        );
        c.revoke_failed(1);
        assert_eq!(c.take_expired(), vec![1]);
        assert_eq!(c.keep_alive(2), Some(100));
        assert_eq!(c.keep_alive(3), None);
        let (ttl, left) = c.remaining(2).unwrap();
        assert_eq!(ttl, 100);
        assert!((99..=100).contains(&left));
        c.revoked(1);
        assert!(c.remaining(1).is_none());
    }
}
