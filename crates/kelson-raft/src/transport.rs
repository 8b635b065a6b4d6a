//! Peer transport: a small gRPC service (proto/kelson/raftpeer.proto) between members.
//!
//! Sending: one task per peer owns a bounded queue and one long-lived client stream
//! (`SendMessages`). The Ready loop only `try_send`s into that queue, so a slow or dead peer can
//! never block raft; a full queue or a broken stream is reported to raft as unreachable (raft then
//! probes instead of pipelining). Messages are batched per write (up to ~4 MiB). Snapshot
//! messages, which can be hundreds of MB, go over a separate chunked `Snapshot` stream in a task of
//! their own, and their outcome is reported back with `report_snapshot`.
//!
//! Receiving: every batch names the cluster and both members; a mismatch or a message that does
//! not decode is refused with a gRPC error and logged, never stepped into raft. The server's
//! streams end when the node shuts down so a graceful server stop cannot hang on a peer's stream.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use prost_011::Message as _;
use raft::eraftpb::{EntryType, Message, MessageType};
use rustls::{ClientConfig, ServerConfig};
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status, Streaming};

use crate::node::Msg;
use crate::{MemberInfo, RaftError};

/// Generated gRPC types of the peer protocol.
pub mod pb {
    tonic::include_proto!("kelson.raftpeer");
}

use pb::raft_peer_client::RaftPeerClient;
use pb::raft_peer_server::{RaftPeer, RaftPeerServer};
use pb::{Done, MembersRequest, MembersResponse, MessageBatch, SnapshotChunk};

/// Messages queued per peer before we start dropping (raft retransmits what is lost).
const PEER_QUEUE: usize = 4096;
/// Upper bound for one batch on the wire.
const BATCH_BYTES: usize = 4 << 20;
const SNAPSHOT_CHUNK: usize = 1 << 20;

/// The status message a member answers a removed member's traffic with (etcd answers HTTP 410
/// with the same text); the removed member stops when it sees it. Needed because a removed
/// member often never learns that its removal committed: the leader stops replicating to it as
/// soon as it applies the change.
pub(crate) const REMOVED: &str = "the member has been permanently removed from the cluster";

/// Ids of members removed from the cluster, shared by the Ready loop and the peer server.
pub(crate) type Removed = Arc<RwLock<std::collections::HashSet<u64>>>;

/// Largest gRPC message either side accepts: a batch, or one entry of max_request_bytes plus slack.
pub(crate) fn max_grpc_message(max_request_bytes: usize) -> usize {
    (BATCH_BYTES + 2 * max_request_bytes).max(16 << 20)
}

pub(crate) type Members = Arc<RwLock<BTreeMap<u64, MemberInfo>>>;

/// A lazily connecting channel to a peer URL, over mutual TLS for `https` URLs (see
/// [`crate::tls`]: the client certificate is re-read when it is renewed).
fn peer_channel(url: &str, tls: Option<&Arc<ClientConfig>>) -> Result<Channel, RaftError> {
    crate::tls::lazy_channel(url, tls, |ep| {
        ep.connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
    })
}

/// Asks the members at `urls` for the member list (used by a member joining an existing
/// cluster to learn the cluster id and its own id). Tries each URL once.
pub(crate) async fn fetch_members(
    urls: &[String],
    tls: Option<&Arc<ClientConfig>>,
) -> Result<(u64, Vec<MemberInfo>), RaftError> {
    let mut last = RaftError::Transport("no peer urls to ask for the member list".into());
    for url in urls {
        let ch = match peer_channel(url, tls) {
            Ok(ch) => ch,
            Err(e) => {
                last = e;
                continue;
            }
        };
        let res = tokio::time::timeout(Duration::from_secs(2), async {
            let resp = RaftPeerClient::new(ch)
                .members(MembersRequest {})
                .await
                .map_err(|e| RaftError::Transport(format!("{url}: {e}")))?
                .into_inner();
            let members: Vec<MemberInfo> = serde_json::from_slice(&resp.members_json)
                .map_err(|e| RaftError::Transport(format!("{url}: bad member list: {e}")))?;
            Ok::<_, RaftError>((resp.cluster_id, members))
        })
        .await;
        match res {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => last = e,
            Err(_) => last = RaftError::Transport(format!("{url}: timed out")),
        }
    }
    Err(last)
}

// ---------------------------------------------------------------------------------------------
// Server side.

pub(crate) struct PeerService {
    pub id: u64,
    pub cluster_id: Arc<AtomicU64>,
    pub inbox: mpsc::Sender<Msg>,
    pub members: Members,
    pub removed: Removed,
    pub shutdown: watch::Receiver<bool>,
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

impl PeerService {
    fn check_header(&self, cluster_id: u64, from: u64, to: u64) -> Result<(), Status> {
        let ours = self.cluster_id.load(Ordering::Relaxed);
        if cluster_id != ours {
            tracing::warn!(from = %format!("{from:x}"), "refusing peer traffic for cluster {cluster_id:x}, ours is {ours:x}");
            return Err(Status::failed_precondition(format!(
                "cluster id mismatch: got {cluster_id:x}, want {ours:x}"
            )));
        }
        if to != self.id {
            tracing::warn!(from = %format!("{from:x}"), "refusing peer traffic addressed to {to:x}");
            return Err(Status::failed_precondition(format!(
                "member id mismatch: got {to:x}, this is {:x}",
                self.id
            )));
        }
        if self.removed.read().contains(&from) {
            tracing::info!(from = %format!("{from:x}"), "refusing peer traffic from a removed member");
            return Err(Status::permission_denied(REMOVED));
        }
        Ok(())
    }
}

/// Decodes one raft message from a peer and checks the fields raft-rs would panic on.
pub(crate) fn decode_peer_message(bytes: &[u8], from: u64, to: u64) -> Result<Message, Status> {
    let m = Message::decode(bytes).map_err(|e| {
        tracing::warn!(from = %format!("{from:x}"), "malformed raft message: {e}");
        Status::invalid_argument(format!("malformed raft message: {e}"))
    })?;
    if MessageType::from_i32(m.msg_type).is_none()
        || m.entries
            .iter()
            .any(|e| EntryType::from_i32(e.entry_type).is_none())
    {
        tracing::warn!(from = %format!("{from:x}"), "raft message with an unknown type");
        return Err(Status::invalid_argument(
            "raft message with an unknown type",
        ));
    }
    if m.from != from || m.to != to {
        tracing::warn!(from = %format!("{from:x}"), "raft message from/to {:x}/{:x} does not match its batch", m.from, m.to);
        return Err(Status::invalid_argument(
            "raft message from/to does not match its batch",
        ));
    }
    Ok(m)
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn send_messages(
        &self,
        req: Request<Streaming<MessageBatch>>,
    ) -> Result<Response<Done>, Status> {
        let mut s = req.into_inner();
        let stop = stopped(self.shutdown.clone());
        tokio::pin!(stop);
        loop {
            let batch = tokio::select! {
                r = s.message() => r?,
                _ = &mut stop => return Err(Status::unavailable("etcdserver: server stopped")),
            };
            let Some(batch) = batch else {
                return Ok(Response::new(Done {}));
            };
            self.check_header(batch.cluster_id, batch.from, batch.to)?;
            for raw in &batch.messages {
                let m = decode_peer_message(raw, batch.from, batch.to)?;
                self.inbox
                    .send(Msg::Raft(m))
                    .await
                    .map_err(|_| Status::unavailable("etcdserver: server stopped"))?;
            }
        }
    }

    async fn snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<Done>, Status> {
        let mut s = req.into_inner();
        let mut header: Option<(u64, u64, Vec<u8>)> = None;
        let mut data = Vec::new();
        while let Some(chunk) = s.message().await? {
            if header.is_none() {
                self.check_header(chunk.cluster_id, chunk.from, chunk.to)?;
                header = Some((chunk.from, chunk.to, chunk.message));
            }
            data.extend_from_slice(&chunk.data);
        }
        let Some((from, to, msg)) = header else {
            return Err(Status::invalid_argument("empty snapshot stream"));
        };
        let mut m = decode_peer_message(&msg, from, to)?;
        if m.get_msg_type() != MessageType::MsgSnapshot {
            return Err(Status::invalid_argument(
                "snapshot stream without a snapshot message",
            ));
        }
        m.mut_snapshot().data = data;
        tracing::info!(from = %format!("{from:x}"), index = m.get_snapshot().get_metadata().index, "received snapshot");
        self.inbox
            .send(Msg::Raft(m))
            .await
            .map_err(|_| Status::unavailable("etcdserver: server stopped"))?;
        Ok(Response::new(Done {}))
    }

    async fn members(
        &self,
        _req: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        let members: Vec<MemberInfo> = self.members.read().values().cloned().collect();
        let members_json =
            serde_json::to_vec(&members).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(MembersResponse {
            cluster_id: self.cluster_id.load(Ordering::Relaxed),
            members_json,
        }))
    }
}

/// Runs the peer server on `listener` until `shutdown` turns true; with `tls`, over TLS
/// connections accepted by `kelson_runtime::tls::tls_incoming` (reloading certificate).
pub(crate) fn spawn_server(
    listener: TcpListener,
    svc: PeerService,
    tls: Option<Arc<ServerConfig>>,
    max_msg: usize,
) -> Result<JoinHandle<()>, RaftError> {
    let shutdown = svc.shutdown.clone();
    let router = Server::builder().add_service(
        RaftPeerServer::new(svc)
            .max_decoding_message_size(max_msg)
            .max_encoding_message_size(max_msg),
    );
    Ok(tokio::spawn(async move {
        let served = match tls {
            // tls_incoming sets nodelay on accepted sockets itself.
            Some(tls) => {
                let incoming = kelson_runtime::tls::tls_incoming(listener, tls);
                router
                    .serve_with_incoming_shutdown(incoming, stopped(shutdown))
                    .await
            }
            None => {
                // Nagle on accepted peer sockets would hold small raft messages (appends,
                // acks, heartbeats) back against the peer's delayed ACK: ~40 ms per round trip.
                let incoming =
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
                router
                    .serve_with_incoming_shutdown(incoming, stopped(shutdown))
                    .await
            }
        };
        if let Err(e) = served {
            tracing::error!("peer server: {e}");
        }
    }))
}

// ---------------------------------------------------------------------------------------------
// Client side.

struct Peer {
    url: String,
    tx: mpsc::Sender<Message>,
    client: RaftPeerClient<Channel>,
    task: JoinHandle<()>,
}

/// Outgoing side, owned by the Ready loop.
pub(crate) struct Transport {
    rt: Handle,
    id: u64,
    cluster_id: Arc<AtomicU64>,
    tls: Option<Arc<ClientConfig>>,
    inbox: mpsc::Sender<Msg>,
    peers: HashMap<u64, Peer>,
    max_msg: usize,
    snapshot_tasks: Vec<JoinHandle<()>>,
}

impl Transport {
    pub(crate) fn new(
        rt: Handle,
        id: u64,
        cluster_id: Arc<AtomicU64>,
        tls: Option<Arc<ClientConfig>>,
        inbox: mpsc::Sender<Msg>,
        max_msg: usize,
    ) -> Transport {
        Transport {
            rt,
            id,
            cluster_id,
            tls,
            inbox,
            peers: HashMap::new(),
            max_msg,
            snapshot_tasks: Vec::new(),
        }
    }

    fn peer(&mut self, to: u64, members: &Members) -> Option<&mut Peer> {
        let url = members.read().get(&to)?.peer_urls.first()?.clone();
        if self.peers.get(&to).is_some_and(|p| p.url != url) {
            if let Some(old) = self.peers.remove(&to) {
                old.task.abort();
            }
        }
        if !self.peers.contains_key(&to) {
            let channel = {
                let _g = self.rt.enter();
                match peer_channel(&url, self.tls.as_ref()) {
                    Ok(ch) => ch,
                    Err(e) => {
                        tracing::warn!(peer = %format!("{to:x}"), "{e}");
                        return None;
                    }
                }
            };
            let client = RaftPeerClient::new(channel)
                .max_decoding_message_size(self.max_msg)
                .max_encoding_message_size(self.max_msg);
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            let task = self.rt.spawn(peer_task(
                self.id,
                to,
                self.cluster_id.clone(),
                client.clone(),
                rx,
                self.inbox.clone(),
            ));
            self.peers.insert(
                to,
                Peer {
                    url,
                    tx,
                    client,
                    task,
                },
            );
        }
        self.peers.get_mut(&to)
    }

    /// Queues messages; returns the ids raft should consider unreachable right now.
    pub(crate) fn send(&mut self, msgs: Vec<Message>, members: &Members) -> Vec<u64> {
        let mut unreachable = Vec::new();
        self.snapshot_tasks.retain(|t| !t.is_finished());
        for m in msgs {
            let to = m.to;
            if to == self.id {
                continue;
            }
            let is_snap = m.get_msg_type() == MessageType::MsgSnapshot;
            let (id, cluster_id, inbox) = (self.id, self.cluster_id.clone(), self.inbox.clone());
            let rt = self.rt.clone();
            let Some(peer) = self.peer(to, members) else {
                unreachable.push(to);
                continue;
            };
            if is_snap {
                let client = peer.client.clone();
                let t = rt.spawn(send_snapshot(id, cluster_id, client, m, inbox));
                self.snapshot_tasks.push(t);
            } else if peer.tx.try_send(m).is_err() {
                unreachable.push(to);
            }
        }
        unreachable.sort_unstable();
        unreachable.dedup();
        unreachable
    }

    /// Forgets a peer whose URL changed: what was queued for the old address is dropped.
    pub(crate) fn remove_peer(&mut self, id: u64) {
        if let Some(p) = self.peers.remove(&id) {
            p.task.abort();
        }
    }

    /// Forgets a peer removed from the cluster, but first delivers what is already queued for
    /// it (bounded by [`RETIRE_DRAIN`]). The leader applies a removal in the same Ready in
    /// which it queued the append carrying the new commit index to the removed member; that
    /// message is how the removed member learns its removal committed, applies it, answers a
    /// MemberRemove it was asked itself and stops. Aborting the queue would lose it.
    pub(crate) fn retire_peer(&mut self, id: u64) {
        if let Some(p) = self.peers.remove(&id) {
            drop(p.tx);
            let task = p.task;
            self.rt.spawn(async move {
                let abort = task.abort_handle();
                if tokio::time::timeout(RETIRE_DRAIN, task).await.is_err() {
                    abort.abort();
                }
            });
        }
    }

    /// Stops sending: closes every peer queue, gives the streams `drain` to deliver what they
    /// hold (a stopping leader's last appends carry commit indexes the others need), then
    /// aborts whatever is left.
    pub(crate) async fn stop_draining(&mut self, drain: Duration) {
        let tasks: Vec<JoinHandle<()>> = self
            .peers
            .drain()
            .map(|(_, p)| {
                drop(p.tx);
                p.task
            })
            .collect();
        let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
        let _ = tokio::time::timeout(drain, futures::future::join_all(tasks)).await;
        for a in aborts {
            a.abort();
        }
        self.stop();
    }

    pub(crate) fn stop(&mut self) {
        for (_, p) in self.peers.drain() {
            p.task.abort();
        }
        for t in self.snapshot_tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How long a retired peer's task may take to deliver what was queued for it.
const RETIRE_DRAIN: Duration = Duration::from_secs(2);

async fn peer_task(
    from: u64,
    to: u64,
    cluster_id: Arc<AtomicU64>,
    client: RaftPeerClient<Channel>,
    mut rx: mpsc::Receiver<Message>,
    inbox: mpsc::Sender<Msg>,
) {
    let mut backoff = Duration::from_millis(50);
    'connect: loop {
        let Some(first) = rx.recv().await else { return };
        let (stx, srx) = mpsc::channel::<MessageBatch>(16);
        let mut c = client.clone();
        let mut call = tokio::spawn(async move {
            c.send_messages(Request::new(ReceiverStream::new(srx)))
                .await
        });
        let mut pending = Some(first);
        loop {
            let m = match pending.take() {
                Some(m) => m,
                None => {
                    // Watch the call too: a peer that refuses us (e.g. because this member was
                    // removed) ends it at once, and waiting for our next message to notice
                    // could take an election timeout.
                    tokio::select! {
                        m = rx.recv() => match m {
                            Some(m) => m,
                            None => {
                                // Queue closed (the peer was retired): let the stream deliver
                                // what it holds, then end it; bounded by the caller's drain.
                                drop(stx);
                                let _ = call.await;
                                return;
                            }
                        },
                        r = &mut call => {
                            peer_call_ended(to, r, &inbox);
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(1));
                            while rx.try_recv().is_ok() {}
                            continue 'connect;
                        }
                    }
                }
            };
            let mut size = m.encoded_len();
            let mut batch = vec![m.encode_to_vec()];
            while size < BATCH_BYTES {
                match rx.try_recv() {
                    Ok(m) => {
                        size += m.encoded_len();
                        batch.push(m.encode_to_vec());
                    }
                    Err(_) => break,
                }
            }
            let mb = MessageBatch {
                cluster_id: cluster_id.load(Ordering::Relaxed),
                from,
                to,
                messages: batch,
            };
            if stx.send(mb).await.is_err() {
                // The call ended (peer down, refused us, or restarted): say so and reconnect.
                peer_call_ended(to, (&mut call).await, &inbox);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                // Drop what queued up while the peer was away; raft resends from its progress.
                while rx.try_recv().is_ok() {}
                continue 'connect;
            }
            backoff = Duration::from_millis(50);
        }
    }
}

/// Reports the end of a peer's message stream to the Ready loop: always as unreachable, and
/// as [`Msg::Removed`] when the peer refused us because this member was removed.
fn peer_call_ended(
    to: u64,
    r: Result<Result<Response<Done>, Status>, tokio::task::JoinError>,
    inbox: &mpsc::Sender<Msg>,
) {
    if let Ok(Err(status)) = r {
        tracing::debug!(peer = %format!("{to:x}"), "peer stream: {status}");
        if status.code() == tonic::Code::PermissionDenied && status.message() == REMOVED {
            tracing::warn!(peer = %format!("{to:x}"), "{REMOVED} (peer says so)");
            let _ = inbox.try_send(Msg::Removed);
        }
    }
    let _ = inbox.try_send(Msg::Unreachable(to));
}

async fn send_snapshot(
    from: u64,
    cluster_id: Arc<AtomicU64>,
    mut client: RaftPeerClient<Channel>,
    mut m: Message,
    inbox: mpsc::Sender<Msg>,
) {
    let to = m.to;
    let data = std::mem::take(&mut m.mut_snapshot().data);
    let index = m.get_snapshot().get_metadata().index;
    let header = m.encode_to_vec();
    let cid = cluster_id.load(Ordering::Relaxed);
    let mut chunks = Vec::with_capacity(data.len() / SNAPSHOT_CHUNK + 1);
    let mut first = true;
    let mut rest: &[u8] = &data;
    while first || !rest.is_empty() {
        let n = rest.len().min(SNAPSHOT_CHUNK);
        chunks.push(SnapshotChunk {
            cluster_id: cid,
            from,
            to,
            message: if first { header.clone() } else { Vec::new() },
            data: rest[..n].to_vec(),
        });
        rest = &rest[n..];
        first = false;
    }
    tracing::info!(peer = %format!("{to:x}"), index, bytes = data.len(), "sending snapshot");
    let res = tokio::time::timeout(
        Duration::from_secs(600),
        client.snapshot(tokio_stream::iter(chunks)),
    )
    .await;
    let ok = matches!(res, Ok(Ok(_)));
    if !ok {
        tracing::warn!(peer = %format!("{to:x}"), index, "sending snapshot failed: {res:?}");
    }
    let _ = inbox.send(Msg::SnapshotStatus(to, ok)).await;
}
