//! `io.kelson.KV1`: the store's own D-Bus interface, served next to `io.kelson.Daemon1`.
//!
//! Properties are read live from the node and the MVCC on every Get; `LeaderChanged` is emitted
//! (together with PropertiesChanged for Leader and Term) by [`watch_leader`] whenever the Raft
//! status reports a different leader.

use std::sync::Arc;
use std::time::Duration;

use kelson_etcdpb::internal::internal_request::Request as IReq;
use kelson_etcdpb::CompactionRequest;
use zbus::fdo;
use zbus::object_server::SignalEmitter;

use crate::store::Shared;

pub struct Kv1 {
    pub shared: Arc<Shared>,
}

fn failed(e: impl std::fmt::Display) -> fdo::Error {
    fdo::Error::Failed(e.to_string())
}

#[zbus::interface(name = "io.kelson.KV1")]
impl Kv1 {
    #[zbus(property)]
    fn member_id(&self) -> u64 {
        self.shared.node().id()
    }
    #[zbus(property)]
    fn leader(&self) -> u64 {
        self.shared.node().status().leader_id
    }
    #[zbus(property)]
    fn term(&self) -> u64 {
        self.shared.node().status().term
    }
    #[zbus(property)]
    fn applied_index(&self) -> u64 {
        self.shared.node().status().applied_index
    }
    #[zbus(property)]
    fn db_size(&self) -> i64 {
        self.shared.mvcc.read().db_size_bytes()
    }
    /// "healthy" when a leader is known and no alarm is active, else a reason.
    #[zbus(property)]
    fn health(&self) -> String {
        health(&self.shared)
    }

    /// Hands leadership to `member` (this member must be the leader).
    async fn transfer_leadership(&self, member: u64) -> fdo::Result<()> {
        let node = self.shared.node();
        let st = node.status();
        if st.leader_id != st.id {
            return Err(fdo::Error::Failed(crate::errors::ERR_NOT_LEADER.into()));
        }
        tokio::time::timeout(Duration::from_secs(10), node.transfer_leader(member))
            .await
            .map_err(|_| failed(crate::errors::ERR_TIMEOUT))?
            .map_err(failed)
    }

    /// Writes a snapshot (the same format as `etcdctl snapshot save`) to `path`.
    async fn snapshot(&self, path: String) -> fdo::Result<u64> {
        let mvcc = self.shared.mvcc.clone();
        tokio::task::spawn_blocking(move || -> Result<u64, String> {
            let data = mvcc.read().snapshot().map_err(|e| e.to_string())?;
            let data = crate::maintenance::encode_snapshot(&data);
            let tmp = format!("{path}.part");
            std::fs::write(&tmp, &data).map_err(|e| format!("{tmp}: {e}"))?;
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(|e| e.to_string())?;
            std::fs::rename(&tmp, &path).map_err(|e| format!("{path}: {e}"))?;
            Ok(data.len() as u64)
        })
        .await
        .map_err(failed)?
        .map_err(fdo::Error::Failed)
    }

    /// Compacts history up to `revision`.
    async fn compact(&self, revision: i64) -> fdo::Result<()> {
        self.shared
            .propose(IReq::Compaction(CompactionRequest {
                revision,
                physical: true,
            }))
            .await
            .map(|_| ())
            .map_err(|s| fdo::Error::Failed(s.message().to_string()))
    }

    async fn defragment(&self) -> fdo::Result<()> {
        let db = self.shared.db.clone();
        tokio::task::spawn_blocking(move || crate::maintenance::defragment(&db))
            .await
            .map_err(failed)
    }

    #[zbus(signal, name = "LeaderChanged")]
    async fn leadership_changed(
        emitter: &SignalEmitter<'_>,
        leader: u64,
        term: u64,
    ) -> zbus::Result<()>;
}

pub fn health(shared: &Shared) -> String {
    let st = shared.node().status();
    if st.leader_id == 0 {
        return "no leader".into();
    }
    let alarms = shared.mvcc.read().alarms();
    if !alarms.is_empty() {
        return format!("alarms active: {alarms:?}");
    }
    "healthy".into()
}

/// Emits LeaderChanged and PropertiesChanged on every leader change until the node stops.
pub async fn watch_leader(shared: Arc<Shared>, conn: zbus::Connection, path: String) {
    let mut rx = shared.node().watch_role();
    let mut last = (0u64, 0u64);
    loop {
        let (leader, term) = {
            let st = rx.borrow_and_update();
            (st.leader_id, st.term)
        };
        if (leader, term) != last && leader != last.0 {
            if let Ok(iface) = conn
                .object_server()
                .interface::<_, Kv1>(path.as_str())
                .await
            {
                let emitter = iface.signal_emitter();
                let _ = Kv1::leadership_changed(emitter, leader, term).await;
                let kv = iface.get().await;
                let _ = kv.leader_changed(emitter).await;
                let _ = kv.term_changed(emitter).await;
            }
        }
        last = (leader, term);
        if rx.changed().await.is_err() {
            return;
        }
    }
}
