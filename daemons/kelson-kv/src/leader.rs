//! Forwarding lease traffic to the leader.
//!
//! KeepAlive and TimeToLive depend on the leader's in-memory expiry clock, so a follower relays
//! them to the leader's advertised client URL with the ordinary etcd Lease API (as etcd relays
//! them over its peer HTTP API). One channel is cached per leader; a leader change replaces it.
//! Over TLS it presents this member's client certificate, re-read when renewed.

use std::sync::Arc;
use std::time::Duration;

use kelson_etcdpb::lease_client::LeaseClient;
use kelson_etcdpb::*;
use parking_lot::Mutex;
use tokio::sync::Mutex as AsyncMutex;
use tonic::transport::Channel;
use tonic::Status;

use crate::errors::{status_for_message, ERR_NO_LEADER};
use crate::store::Shared;

#[derive(Default)]
pub struct LeaderClient {
    channel: Mutex<Option<(u64, Channel)>>,
    /// One keep-alive stream to the leader, shared by every forwarded request.
    stream: AsyncMutex<Option<KeepAliveRelay>>,
}

struct KeepAliveRelay {
    leader: u64,
    tx: tokio::sync::mpsc::Sender<LeaseKeepAliveRequest>,
    rx: tonic::Streaming<LeaseKeepAliveResponse>,
}

impl LeaderClient {
    fn channel(&self, shared: &Shared) -> Result<(u64, Channel), Status> {
        let st = shared.node().status();
        if st.leader_id == 0 {
            return Err(status_for_message(ERR_NO_LEADER));
        }
        if let Some((id, ch)) = self.channel.lock().as_ref() {
            if *id == st.leader_id {
                return Ok((*id, ch.clone()));
            }
        }
        let member = shared
            .node()
            .members()
            .into_iter()
            .find(|m| m.id == st.leader_id)
            .ok_or_else(|| status_for_message(ERR_NO_LEADER))?;
        let url = member
            .client_urls
            .first()
            .cloned()
            .ok_or_else(|| Status::unavailable("etcdserver: leader has no client URL yet"))?;
        let tls = if url.starts_with("https://") {
            Some(client_tls(shared)?)
        } else {
            None
        };
        let ch = kelson_raft::tls::lazy_channel(&url, tls.as_ref(), |ep| {
            ep.connect_timeout(Duration::from_secs(3))
                .timeout(Duration::from_secs(5))
        })
        .map_err(|e| Status::internal(format!("leader URL {url}: {e}")))?;
        *self.channel.lock() = Some((st.leader_id, ch.clone()));
        Ok((st.leader_id, ch))
    }

    pub async fn time_to_live(
        &self,
        shared: &Shared,
        req: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse, Status> {
        let (_, ch) = self.channel(shared)?;
        Ok(LeaseClient::new(ch)
            .lease_time_to_live(req)
            .await?
            .into_inner())
    }

    pub async fn keep_alive(
        &self,
        shared: &Shared,
        id: i64,
    ) -> Result<LeaseKeepAliveResponse, Status> {
        let (leader, ch) = self.channel(shared)?;
        let mut guard = self.stream.lock().await;
        if guard.as_ref().map(|r| r.leader) != Some(leader) {
            let (tx, rx) = tokio::sync::mpsc::channel(16);
            let rx_stream = tokio_stream::wrappers::ReceiverStream::new(rx);
            let resp = LeaseClient::new(ch).lease_keep_alive(rx_stream).await?;
            *guard = Some(KeepAliveRelay {
                leader,
                tx,
                rx: resp.into_inner(),
            });
        }
        let relay = guard.as_mut().expect("set above");
        let result = async {
            relay
                .tx
                .send(LeaseKeepAliveRequest { id })
                .await
                .map_err(|_| Status::unavailable("etcdserver: leader stream closed"))?;
            match tokio::time::timeout(Duration::from_secs(5), relay.rx.message()).await {
                Ok(Ok(Some(r))) => Ok(r),
                Ok(Ok(None)) => Err(Status::unavailable("etcdserver: leader stream closed")),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(status_for_message(crate::errors::ERR_TIMEOUT)),
            }
        }
        .await;
        if result.is_err() {
            *guard = None;
        }
        result
    }
}

/// The client side of our own client certificate: re-read when it is renewed, like every
/// certificate the member uses (`kelson_raft::tls`).
fn client_tls(shared: &Shared) -> Result<Arc<rustls::ClientConfig>, Status> {
    let cfg = &shared.cfg;
    let ca = cfg.trusted_ca_file.as_deref().ok_or_else(|| {
        Status::unavailable(
            "etcdserver: cannot forward to an https leader without --trusted-ca-file",
        )
    })?;
    kelson_raft::tls::client_config(ca, cfg.cert_file.as_deref(), cfg.key_file.as_deref())
        .map_err(|e| Status::internal(format!("leader client TLS: {e}")))
}
