//! The etcd v3 `Watch` gRPC service over a [`WatchHub`].
//!
//! Each call of the bidirectional `Watch` RPC gets its own task (see the `stream` module) and a
//! bounded response channel; the transport drains the channel. [`WatchService::serve_stream`] is
//! the same entry point without gRPC, so the semantics can be tested (and embedded) directly.

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use kelson_etcdpb::etcdserverpb::watch_server::Watch;
use kelson_etcdpb::etcdserverpb::{WatchRequest, WatchResponse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::hub::WatchHub;
use crate::source::HeaderSource;
use crate::stream::{StreamConfig, StreamTask};
use crate::wire::{EncodedWatchResponse, WatchGrpcServer};

/// etcd's default request size limit (`--max-request-bytes`), which it also uses to decide
/// when to fragment a watch response.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 3 * 1024 * 1024 / 2;

/// Responses buffered per stream before a slow client stalls its stream task (etcd buffers 128
/// per stream too).
pub const DEFAULT_STREAM_BUFFER: usize = 128;

/// Implements `kelson_etcdpb::etcdserverpb::watch_server::Watch`.
#[derive(Clone)]
pub struct WatchService {
    hub: Arc<WatchHub>,
    header: Arc<dyn HeaderSource>,
    config: StreamConfig,
    stream_buffer: usize,
}

impl std::fmt::Debug for WatchService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchService")
            .field("hub", &self.hub)
            .field("progress_interval", &self.config.progress_interval)
            .field("max_response_bytes", &self.config.max_response_bytes)
            .field("stream_buffer", &self.stream_buffer)
            .finish()
    }
}

impl WatchService {
    /// A service over `hub`; `progress_interval` is how often watchers created with
    /// `progress_notify` get a bookmark when idle (etcd's default is 10 minutes; zero disables).
    pub fn new(
        hub: Arc<WatchHub>,
        header: Arc<dyn HeaderSource>,
        progress_interval: Duration,
    ) -> Self {
        WatchService {
            hub,
            header,
            config: StreamConfig {
                progress_interval,
                max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            },
            stream_buffer: DEFAULT_STREAM_BUFFER,
        }
    }

    /// Responses are kept under this size where possible: batches are split between
    /// revisions, and a watcher with `fragment` also gets a single large revision in pieces.
    pub fn with_max_response_bytes(mut self, bytes: usize) -> Self {
        self.config.max_response_bytes = bytes.max(1);
        self
    }

    /// Responses buffered per stream before the stream waits for its client.
    pub fn with_stream_buffer(mut self, responses: usize) -> Self {
        self.stream_buffer = responses.max(1);
        self
    }

    /// The hub this service reads from.
    pub fn hub(&self) -> &Arc<WatchHub> {
        &self.hub
    }

    /// Serves one watch stream with responses as they go on the wire (events pre-encoded and
    /// shared between watchers, see `wire`): spawns its task on the current tokio runtime. The
    /// task ends when the returned stream is dropped.
    pub fn serve_stream_encoded<S>(
        &self,
        inbound: S,
    ) -> ReceiverStream<Result<EncodedWatchResponse, Status>>
    where
        S: Stream<Item = Result<WatchRequest, Status>> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(self.stream_buffer);
        let task = StreamTask::new(
            Arc::clone(&self.hub),
            Arc::clone(&self.header),
            self.config.clone(),
            tx,
        );
        tokio::spawn(task.run(inbound));
        ReceiverStream::new(rx)
    }

    /// [`Self::serve_stream_encoded`] with plain responses, for in-process callers: a
    /// forwarding task decodes them. The stream ends when the returned stream is dropped.
    pub fn serve_stream<S>(&self, inbound: S) -> ReceiverStream<Result<WatchResponse, Status>>
    where
        S: Stream<Item = Result<WatchRequest, Status>> + Send + 'static,
    {
        let mut encoded = self.serve_stream_encoded(inbound);
        let (tx, rx) = mpsc::channel(self.stream_buffer);
        tokio::spawn(async move {
            loop {
                let item = tokio::select! {
                    // Dropping `encoded` is what tells the stream task its client is gone.
                    _ = tx.closed() => break,
                    item = encoded.next() => match item {
                        Some(item) => item,
                        None => break,
                    },
                };
                let item = item.and_then(|r| {
                    r.into_response()
                        .map_err(|e| Status::internal(format!("watch response: {e}")))
                });
                if tx.send(item).await.is_err() {
                    break;
                }
            }
        });
        ReceiverStream::new(rx)
    }

    /// The gRPC service for `tonic::transport::Server::add_service`: writes pre-encoded
    /// responses, without a limit on the size of one (a non-fragmented revision may exceed any
    /// limit).
    pub fn into_server(self) -> WatchGrpcServer {
        WatchGrpcServer::new(self)
    }
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = ReceiverStream<Result<WatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Ok(Response::new(self.serve_stream(request.into_inner())))
    }
}
