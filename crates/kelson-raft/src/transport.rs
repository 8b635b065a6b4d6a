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
//!
//! Snapshots (as etcd sends them): the raft message carries only the snapshot's metadata, and
//! the snapshot file it names is streamed from disk in 1 MiB chunks by a blocking reader that
//! stays at most two chunks ahead of the network, so neither the Raft thread nor memory sees
//! the whole snapshot. The receiver writes the chunks to a part file in the snapshot
//! directory, checking that every chunk continues where the last one ended, then checks the
//! size and SHA-256 the last chunk announces, fsyncs the file, renames it to the snapshot file
//! its metadata names and only then steps the message into raft. Anything else — the sender
//! dying mid-transfer, a gap, a checksum mismatch, a stream without its last chunk — removes
//! the part file and fails the call, which the sender reports to raft as a failed snapshot (and
//! the peer as unreachable), so raft sends a snapshot again later. Snapshot messages on the
//! ordinary message stream are refused.

use std::collections::{BTreeMap, HashMap};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use prost_011::Message as _;
use raft::eraftpb::{EntryType, Message, MessageType};
use rustls::{ClientConfig, ServerConfig};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status, Streaming};

use crate::node::Msg;
use crate::storage;
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
/// Bound for sending one snapshot (and for a receiver waiting for the next chunk).
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);
/// Fault injection for tests: a pause after every snapshot chunk sent, in milliseconds, so a
/// test can kill the sender mid-transfer.
const CHUNK_DELAY_ENV: &str = "KELSON_RAFT_SNAPSHOT_CHUNK_DELAY_MS";

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
    /// Where received snapshot files go (the storage's snapshot directory).
    pub snap_dir: PathBuf,
    /// Numbers the part files of concurrent receptions.
    pub receiving: Arc<AtomicU64>,
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
                if m.get_msg_type() == MessageType::MsgSnapshot {
                    // Its data would name a file we never received.
                    tracing::warn!(from = %format!("{:x}", batch.from), "snapshot on the message stream");
                    return Err(Status::invalid_argument(
                        "snapshots travel over the Snapshot stream",
                    ));
                }
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
        let Some(first) = s.message().await? else {
            return Err(Status::invalid_argument("empty snapshot stream"));
        };
        let (from, to) = (first.from, first.to);
        self.check_header(first.cluster_id, from, to)?;
        let m = decode_peer_message(&first.message, from, to)?;
        if m.get_msg_type() != MessageType::MsgSnapshot
            || m.get_snapshot().data != storage::FILE_DATA
        {
            return Err(Status::invalid_argument(
                "snapshot stream without a snapshot message",
            ));
        }
        let meta = m.get_snapshot().get_metadata().clone();
        let n = self.receiving.fetch_add(1, Ordering::Relaxed);
        let part = PartFile(self.snap_dir.join(format!(
            "{:016x}-{:016x}.snap.part-{from:x}-{n}",
            meta.term, meta.index
        )));
        let stop = stopped(self.shutdown.clone());
        tokio::pin!(stop);
        let received = tokio::select! {
            r = receive_file(&part.0, first, &mut s) => r,
            _ = &mut stop => Err(Status::unavailable("etcdserver: server stopped")),
        };
        let size = match received {
            Ok(size) => size,
            Err(e) => {
                tracing::warn!(from = %format!("{from:x}"), index = meta.index, "receiving snapshot failed: {}", e.message());
                return Err(e);
            }
        };
        // The file must be the snapshot the message describes.
        let head = {
            let p = part.0.clone();
            tokio::task::spawn_blocking(move || storage::open_snapshot_file(&p).map(|f| f.meta))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
        };
        match head {
            Ok(h) if (h.index, h.term) == (meta.index, meta.term) => {}
            Ok(h) => {
                return Err(Status::invalid_argument(format!(
                    "snapshot file holds {}/{}, the message {}/{}",
                    h.index, h.term, meta.index, meta.term
                )))
            }
            Err(e) => return Err(Status::invalid_argument(e.to_string())),
        }
        let path = storage::publish_received(&part.0, &self.snap_dir, &meta)
            .map_err(|e| Status::internal(e.to_string()))?;
        part.disarm();
        tracing::info!(from = %format!("{from:x}"), index = meta.index, bytes = size, path = %path.display(), "received snapshot");
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

/// A part file that is removed unless the reception completes.
struct PartFile(PathBuf);

impl PartFile {
    fn disarm(mut self) {
        self.0 = PathBuf::new();
    }
}

impl Drop for PartFile {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// Writes the chunks of a snapshot stream (starting with `first`) to `path`, checking offsets,
/// size and checksum, and fsyncs it. Returns the size.
async fn receive_file(
    path: &Path,
    first: SnapshotChunk,
    s: &mut Streaming<SnapshotChunk>,
) -> Result<u64, Status> {
    let io = |e: std::io::Error| Status::internal(format!("writing the snapshot: {e}"));
    let mut f = tokio::fs::File::create(path).await.map_err(io)?;
    let mut hasher = Sha256::new();
    let mut written = 0u64;
    let mut chunk = first;
    loop {
        if chunk.offset != written {
            return Err(Status::invalid_argument(format!(
                "snapshot chunk at offset {}, expected {written}",
                chunk.offset
            )));
        }
        f.write_all(&chunk.data).await.map_err(io)?;
        hasher.update(&chunk.data);
        written += chunk.data.len() as u64;
        if chunk.last {
            if chunk.total_size != written {
                return Err(Status::invalid_argument(format!(
                    "snapshot is {written} bytes, the sender says {}",
                    chunk.total_size
                )));
            }
            if hasher.finalize().as_slice() != chunk.sha256.as_slice() {
                return Err(Status::data_loss("snapshot checksum mismatch"));
            }
            break;
        }
        chunk = match tokio::time::timeout(SNAPSHOT_TIMEOUT, s.message()).await {
            Ok(Ok(Some(c))) => c,
            Ok(Ok(None)) => {
                return Err(Status::invalid_argument(
                    "snapshot stream ended before its last chunk",
                ))
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(Status::deadline_exceeded("snapshot stream stalled")),
        };
    }
    f.sync_all().await.map_err(io)?;
    Ok(written)
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
    /// Where the snapshot files raft hands out live.
    snap_dir: PathBuf,
}

impl Transport {
    pub(crate) fn new(
        rt: Handle,
        id: u64,
        cluster_id: Arc<AtomicU64>,
        tls: Option<Arc<ClientConfig>>,
        inbox: mpsc::Sender<Msg>,
        max_msg: usize,
        snap_dir: PathBuf,
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
            snap_dir,
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
            let snap_dir = is_snap.then(|| self.snap_dir.clone());
            let Some(peer) = self.peer(to, members) else {
                unreachable.push(to);
                continue;
            };
            if let Some(snap_dir) = snap_dir {
                let client = peer.client.clone();
                let t = rt.spawn(send_snapshot(id, cluster_id, client, m, inbox, snap_dir));
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
    client: RaftPeerClient<Channel>,
    m: Message,
    inbox: mpsc::Sender<Msg>,
    snap_dir: PathBuf,
) {
    let to = m.to;
    let index = m.get_snapshot().get_metadata().index;
    let res = stream_snapshot(
        from,
        cluster_id.load(Ordering::Relaxed),
        client,
        m,
        &snap_dir,
    )
    .await;
    let ok = match res {
        Ok(bytes) => {
            tracing::info!(peer = %format!("{to:x}"), index, bytes, "sent snapshot");
            true
        }
        Err(e) => {
            tracing::warn!(peer = %format!("{to:x}"), index, "sending snapshot failed: {e}");
            false
        }
    };
    let _ = inbox.send(Msg::SnapshotStatus(to, ok)).await;
}

/// Streams the snapshot file `m` names to its peer; returns its size once the peer has it.
async fn stream_snapshot(
    from: u64,
    cid: u64,
    mut client: RaftPeerClient<Channel>,
    m: Message,
    snap_dir: &Path,
) -> Result<u64, String> {
    let to = m.to;
    let snap = m.get_snapshot();
    if snap.data != storage::FILE_DATA {
        return Err("snapshot message without a snapshot file".into());
    }
    let meta = snap.get_metadata();
    let path = storage::snap_file(snap_dir, meta.term, meta.index);
    // Opened here: a newer snapshot may prune the file while it is sent; the open file stays.
    let file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let size = file
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    let header = m.encode_to_vec();
    let delay = std::env::var(CHUNK_DELAY_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis);
    tracing::info!(peer = %format!("{to:x}"), index = meta.index, bytes = size, "sending snapshot");
    let (tx, rx) = mpsc::channel::<SnapshotChunk>(2);
    let reader = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let mut r = std::io::BufReader::with_capacity(SNAPSHOT_CHUNK, file);
        let mut hasher = Sha256::new();
        let mut offset = 0u64;
        loop {
            let mut data = Vec::with_capacity(SNAPSHOT_CHUNK);
            (&mut r)
                .take(SNAPSHOT_CHUNK as u64)
                .read_to_end(&mut data)
                .map_err(|e| format!("reading the snapshot: {e}"))?;
            hasher.update(&data);
            let n = data.len() as u64;
            let last = offset + n >= size;
            if n == 0 && !last {
                return Err("snapshot file shrank while being sent".into());
            }
            let chunk = SnapshotChunk {
                cluster_id: cid,
                from,
                to,
                message: if offset == 0 {
                    header.clone()
                } else {
                    Vec::new()
                },
                data,
                offset,
                last,
                total_size: if last { size } else { 0 },
                sha256: if last {
                    hasher.clone().finalize().to_vec()
                } else {
                    Vec::new()
                },
            };
            if tx.blocking_send(chunk).is_err() {
                return Ok(()); // The call ended; its result says why.
            }
            offset += n;
            if last {
                return Ok(());
            }
            if let Some(d) = delay {
                std::thread::sleep(d);
            }
        }
    });
    let res =
        tokio::time::timeout(SNAPSHOT_TIMEOUT, client.snapshot(ReceiverStream::new(rx))).await;
    let read = reader.await;
    match res {
        Err(_) => Err("timed out".into()),
        Ok(Err(status)) => Err(status.to_string()),
        Ok(Ok(_)) => match read {
            Ok(Ok(())) => Ok(size),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(e.to_string()),
        },
    }
}
