//! Test support: an in-memory MVCC event log implementing `EventSource`, a fixed header, a
//! transport-free client for `WatchService::serve_stream`, and a real tonic server.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use kelson_etcdpb::etcdserverpb::watch_request::RequestUnion;
use kelson_etcdpb::etcdserverpb::{
    ResponseHeader, WatchCancelRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest,
    WatchResponse,
};
use kelson_etcdpb::mvccpb::{event::EventType, Event, KeyValue};
use kelson_watch::{
    EventSource, HeaderSource, HubConfig, WatchHub, WatchService, WatchSourceError,
};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

/// One write inside a transaction.
pub enum Op<'a> {
    Put(&'a [u8], &'a [u8]),
    Delete(&'a [u8]),
}

#[derive(Default)]
struct Inner {
    log: Vec<Event>,
    kvs: BTreeMap<Vec<u8>, KeyValue>,
    rev: i64,
    compact: i64,
}

/// A tiny MVCC store: every transaction is one revision; the event log is the history.
#[derive(Default)]
pub struct MemStore {
    inner: Mutex<Inner>,
    hub: OnceLock<Arc<WatchHub>>,
    /// How many times the hub read history from the store (catch-up reads).
    pub events_calls: AtomicUsize,
    /// Set to skip publishing (to simulate history the hub never saw).
    silent: std::sync::atomic::AtomicBool,
    /// Set to publish `prev_kv` only while the hub has `prev_kv` watchers (as kelson-kv does).
    lazy_prev_kv: std::sync::atomic::AtomicBool,
}

impl MemStore {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn attach(&self, hub: Arc<WatchHub>) {
        assert!(self.hub.set(hub).is_ok(), "hub attached twice");
    }

    /// Applies `ops` as one revision and publishes it, under the store lock so publishes are
    /// in revision order (as the raft apply loop guarantees).
    pub fn txn(&self, ops: &[Op<'_>]) -> i64 {
        let mut inner = self.inner.lock();
        let rev = inner.rev + 1;
        let mut events = Vec::new();
        for op in ops {
            match *op {
                Op::Put(k, v) => {
                    let prev = inner.kvs.get(k).cloned();
                    let kv = KeyValue {
                        key: k.to_vec(),
                        create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
                        mod_revision: rev,
                        version: prev.as_ref().map_or(1, |p| p.version + 1),
                        value: v.to_vec(),
                        lease: 0,
                    };
                    inner.kvs.insert(k.to_vec(), kv.clone());
                    events.push(Event {
                        r#type: EventType::Put as i32,
                        kv: Some(kv),
                        prev_kv: prev,
                    });
                }
                Op::Delete(k) => {
                    if let Some(prev) = inner.kvs.remove(k) {
                        events.push(Event {
                            r#type: EventType::Delete as i32,
                            kv: Some(KeyValue {
                                key: k.to_vec(),
                                mod_revision: rev,
                                ..Default::default()
                            }),
                            prev_kv: Some(prev),
                        });
                    }
                }
            }
        }
        if events.is_empty() {
            return inner.rev;
        }
        inner.rev = rev;
        inner.log.extend(events.iter().cloned());
        if self.silent.load(Ordering::Relaxed) {
            return rev;
        }
        if let Some(hub) = self.hub.get() {
            if self.lazy_prev_kv.load(Ordering::Relaxed) && !hub.wants_prev_kv() {
                for e in &mut events {
                    e.prev_kv = None;
                }
                hub.publish_batch(Arc::new(events), rev, false);
            } else {
                hub.publish(Arc::new(events), rev);
            }
        }
        rev
    }

    /// Publish `prev_kv` only while a watcher wants it (see `WatchHub::wants_prev_kv`).
    pub fn set_lazy_prev_kv(&self, on: bool) {
        self.lazy_prev_kv.store(on, Ordering::Relaxed);
    }

    pub fn set_publishing(&self, on: bool) {
        self.silent.store(!on, Ordering::Relaxed);
    }

    pub fn put(&self, k: &str, v: &str) -> i64 {
        self.txn(&[Op::Put(k.as_bytes(), v.as_bytes())])
    }

    pub fn delete(&self, k: &str) -> i64 {
        self.txn(&[Op::Delete(k.as_bytes())])
    }

    /// Compacts history at `rev`: events below it can no longer be read (as in etcd, the
    /// revision itself stays readable).
    pub fn compact(&self, rev: i64) {
        let mut inner = self.inner.lock();
        inner.compact = rev;
        inner
            .log
            .retain(|e| e.kv.as_ref().unwrap().mod_revision >= rev);
    }
}

impl EventSource for MemStore {
    fn events(&self, from: i64, to: i64, limit: usize) -> Result<Vec<Event>, WatchSourceError> {
        self.events_calls.fetch_add(1, Ordering::Relaxed);
        let inner = self.inner.lock();
        if from < inner.compact {
            return Err(WatchSourceError::Compacted {
                compact_revision: inner.compact,
            });
        }
        let mut out: Vec<Event> = Vec::new();
        for e in &inner.log {
            let rev = e.kv.as_ref().unwrap().mod_revision;
            if rev < from {
                continue;
            }
            if rev > to {
                break;
            }
            // Stop at `limit`, but only at a revision boundary.
            if out.len() >= limit && out.last().unwrap().kv.as_ref().unwrap().mod_revision != rev {
                break;
            }
            out.push(e.clone());
        }
        Ok(out)
    }

    fn current_revision(&self) -> i64 {
        self.inner.lock().rev
    }

    fn compact_revision(&self) -> i64 {
        self.inner.lock().compact
    }
}

pub struct FixedHeader;

pub const CLUSTER_ID: u64 = 0xC1;
pub const MEMBER_ID: u64 = 0xA1;
pub const RAFT_TERM: u64 = 7;

impl HeaderSource for FixedHeader {
    fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: CLUSTER_ID,
            member_id: MEMBER_ID,
            revision,
            raft_term: RAFT_TERM,
        }
    }
}

pub struct Setup {
    pub store: Arc<MemStore>,
    pub hub: Arc<WatchHub>,
    pub svc: WatchService,
}

pub fn setup(config: HubConfig, progress: Duration) -> Setup {
    let store = MemStore::new();
    let hub = WatchHub::with_config(store.clone(), config);
    store.attach(hub.clone());
    let svc = WatchService::new(hub.clone(), Arc::new(FixedHeader), progress);
    Setup { store, hub, svc }
}

pub fn default_setup() -> Setup {
    setup(HubConfig::default(), Duration::from_secs(600))
}

/// A transport-free client of one watch stream.
pub struct Client {
    tx: mpsc::Sender<Result<WatchRequest, Status>>,
    rx: ReceiverStream<Result<WatchResponse, Status>>,
}

pub const STEP: Duration = Duration::from_secs(5);

impl Client {
    pub fn open(svc: &WatchService) -> Self {
        let (tx, rx) = mpsc::channel(16);
        let rx = svc.serve_stream(ReceiverStream::new(rx));
        Client { tx, rx }
    }

    pub async fn send(&self, req: RequestUnion) {
        self.tx
            .send(Ok(WatchRequest {
                request_union: Some(req),
            }))
            .await
            .expect("stream task gone");
    }

    pub async fn create(&self, req: WatchCreateRequest) {
        self.send(RequestUnion::CreateRequest(req)).await
    }

    pub async fn cancel(&self, watch_id: i64) {
        self.send(RequestUnion::CancelRequest(WatchCancelRequest { watch_id }))
            .await
    }

    pub async fn progress(&self) {
        self.send(RequestUnion::ProgressRequest(WatchProgressRequest {}))
            .await
    }

    /// The next response, failing the test after a bounded wait.
    pub async fn next(&mut self) -> WatchResponse {
        tokio::time::timeout(STEP, self.rx.next())
            .await
            .expect("timed out waiting for a watch response")
            .expect("stream ended")
            .expect("stream error")
    }

    /// Asserts nothing arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Ok(Some(resp)) = tokio::time::timeout(wait, self.rx.next()).await {
            panic!("unexpected response {resp:?}");
        }
    }

    /// Creates a watch and returns its `created` response.
    pub async fn watch(&mut self, req: WatchCreateRequest) -> WatchResponse {
        self.create(req).await;
        let resp = self.next().await;
        assert!(resp.created, "expected created response, got {resp:?}");
        resp
    }
}

pub fn key(k: &str) -> WatchCreateRequest {
    WatchCreateRequest {
        key: k.as_bytes().to_vec(),
        ..Default::default()
    }
}

pub fn prefix(p: &str) -> WatchCreateRequest {
    let mut end = p.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    WatchCreateRequest {
        key: p.as_bytes().to_vec(),
        range_end: end,
        ..Default::default()
    }
}

pub fn all_keys() -> WatchCreateRequest {
    WatchCreateRequest {
        key: vec![0],
        range_end: vec![0],
        ..Default::default()
    }
}

pub fn rev_of(e: &Event) -> i64 {
    e.kv.as_ref().unwrap().mod_revision
}

/// Reads responses for `id` until an event with `mod_revision >= last` arrived; returns every
/// event revision in order. Asserts atomicity (no revision split across responses) on the way.
pub async fn collect_until(c: &mut Client, id: i64, last: i64) -> Vec<i64> {
    let mut revs: Vec<i64> = Vec::new();
    for _ in 0..100_000 {
        if revs.last().is_some_and(|&r| r >= last) {
            return revs;
        }
        let resp = c.next().await;
        assert_eq!(resp.watch_id, id, "{resp:?}");
        assert!(!resp.canceled, "{resp:?}");
        if let (Some(prev), Some(first)) = (revs.last(), resp.events.first()) {
            assert!(
                rev_of(first) > *prev,
                "revision {} split or repeated",
                rev_of(first)
            );
        }
        revs.extend(resp.events.iter().map(rev_of));
    }
    panic!("too many responses");
}

/// Starts a real gRPC server on an ephemeral port; the server task ends with the runtime.
pub async fn serve_grpc(svc: WatchService) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc.into_server())
            .serve_with_incoming(incoming),
    );
    addr
}
