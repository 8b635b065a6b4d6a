//! One watch stream: a single task that owns the stream's watchers and writes its responses.
//!
//! The task waits on four things — a request from the client, the hub's revision signal, the
//! progress ticker, and the client going away — and after each wake-up runs `pump`, which
//! brings every watcher of the stream up to the hub's current revision. Because creation,
//! cancellation, event delivery and progress all happen in this one task, their order on the
//! wire is the order in which they happened: a watcher's `created` response precedes its first
//! event, a cancel ends its events, and a stream-wide progress response is only written once
//! every watcher has been sent everything up to the revision it announces.
//!
//! Responses go through a bounded channel to the transport. When a client stops reading, the
//! channel fills and this task waits on it; that stalls only this stream. `publish` keeps
//! appending to the hub's ring, and when the client resumes, watchers that fell behind the ring
//! catch up from the store — etcd's "slow watcher becomes unsynced" without a victim list.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use kelson_etcdpb::etcdserverpb::watch_request::RequestUnion;
use kelson_etcdpb::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tonic::Status;

use crate::hub::WatchHub;
use crate::source::{HeaderSource, WatchSourceError};
use crate::watcher::{KeyRange, Watcher};
use crate::wire::{EncodedWatchResponse, EventField};

/// etcd's `clientv3.InvalidWatchID`: used for stream-wide progress and failed creates.
pub const INVALID_WATCH_ID: i64 = -1;
/// Cancel reason of a watch whose start revision is compacted (etcd's mvcc.ErrCompacted).
pub const ERR_COMPACTED: &str = "mvcc: required revision has been compacted";
/// Cancel reason for a negative start revision (etcd's rpctypes.ErrCompacted).
pub const ERR_GRPC_COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
/// Cancel reason for a client-chosen watch id already in use on the stream.
pub const ERR_DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
/// Cancel reason for a negative client-chosen watch id (would be ambiguous with -1).
pub const ERR_INVALID_ID: &str = "kelson: watch id must not be negative";

/// Upper bound on hub rounds per wake-up, so a stream keeps answering requests even while the
/// store publishes faster than one round takes; the next wake-up continues where this stopped.
const MAX_ROUNDS_PER_PUMP: usize = 64;

/// Per-stream settings, shared by all streams of a service.
#[derive(Debug, Clone)]
pub(crate) struct StreamConfig {
    pub(crate) progress_interval: Duration,
    pub(crate) max_response_bytes: usize,
}

/// Why the stream task stops.
enum Stop {
    /// The client went away (response channel closed): nothing more to say.
    Closed,
    /// The store failed: end the stream with this status so the client reconnects.
    Failed(Status),
}

type Out = mpsc::Sender<Result<EncodedWatchResponse, Status>>;

pub(crate) struct StreamTask {
    hub: Arc<WatchHub>,
    header: Arc<dyn HeaderSource>,
    config: StreamConfig,
    out: Out,
    watchers: BTreeMap<i64, Watcher>,
    /// etcd's auto ids start at 0 and skip ids the client chose itself.
    next_auto_id: i64,
    /// A WatchProgressRequest arrived while some watcher was still catching up.
    progress_pending: bool,
}

impl StreamTask {
    pub(crate) fn new(
        hub: Arc<WatchHub>,
        header: Arc<dyn HeaderSource>,
        config: StreamConfig,
        out: Out,
    ) -> Self {
        StreamTask {
            hub,
            header,
            config,
            out,
            watchers: BTreeMap::new(),
            next_auto_id: 0,
            progress_pending: false,
        }
    }

    /// Runs the stream until the client goes away or the store fails.
    pub(crate) async fn run<S>(mut self, inbound: S)
    where
        S: Stream<Item = Result<WatchRequest, Status>> + Send + 'static,
    {
        let mut inbound: Pin<Box<S>> = Box::pin(inbound);
        let mut inbound_open = true;
        let mut signal = self.hub.subscribe();
        let interval = self.config.progress_interval;
        // A zero interval disables progress notifications (tokio intervals cannot be zero).
        let mut ticker = (!interval.is_zero()).then(|| {
            let mut t = tokio::time::interval_at(Instant::now() + interval, interval);
            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
            t
        });
        let out = self.out.clone();
        loop {
            let step = tokio::select! {
                biased;
                _ = out.closed() => Err(Stop::Closed),
                req = inbound.next(), if inbound_open => match req {
                    Some(Ok(req)) => self.handle(req).await,
                    Some(Err(status)) => {
                        tracing::debug!(%status, "watch stream: receive failed");
                        Err(Stop::Closed)
                    }
                    // A half-closed stream keeps its watchers, as in etcd.
                    None => {
                        inbound_open = false;
                        Ok(())
                    }
                },
                changed = signal.changed() => match changed {
                    Ok(()) => Ok(()),
                    Err(_) => Err(Stop::Closed),
                },
                _ = async { ticker.as_mut().unwrap().tick().await }, if ticker.is_some() => {
                    match self.pump().await {
                        Ok(()) => self.progress_tick().await,
                        Err(e) => Err(e),
                    }
                }
            };
            let step = match step {
                Ok(()) => self.pump().await,
                Err(e) => Err(e),
            };
            match step {
                Ok(()) => {}
                Err(Stop::Closed) => break,
                Err(Stop::Failed(status)) => {
                    tracing::warn!(%status, "watch stream: ending after store failure");
                    let _ = self.out.send(Err(status)).await;
                    break;
                }
            }
        }
        tracing::debug!(watchers = self.watchers.len(), "watch stream closed");
    }

    async fn send(&self, resp: WatchResponse) -> Result<(), Stop> {
        self.send_encoded(EncodedWatchResponse::from_response(resp))
            .await
    }

    async fn send_encoded(&self, resp: EncodedWatchResponse) -> Result<(), Stop> {
        self.out.send(Ok(resp)).await.map_err(|_| Stop::Closed)
    }

    fn response(&self, watch_id: i64, revision: i64) -> WatchResponse {
        WatchResponse {
            header: Some(self.header.header(revision)),
            watch_id,
            ..Default::default()
        }
    }

    async fn handle(&mut self, req: WatchRequest) -> Result<(), Stop> {
        match req.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => {
                // etcd answers only a cancel of a watcher that exists.
                if self.watchers.remove(&cancel.watch_id).is_some() {
                    let mut resp = self.response(cancel.watch_id, self.hub.current_revision());
                    resp.canceled = true;
                    self.send(resp).await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                self.progress_pending = true;
                self.flush_progress_request().await
            }
            None => {
                tracing::debug!("watch stream: ignoring empty request");
                Ok(())
            }
        }
    }

    async fn create(&mut self, req: WatchCreateRequest) -> Result<(), Stop> {
        let current = self.hub.current_revision();
        let refuse = |this: &Self, reason: &str| {
            let mut resp = this.response(INVALID_WATCH_ID, current);
            resp.created = true;
            resp.canceled = true;
            resp.cancel_reason = reason.to_string();
            resp
        };
        if req.start_revision < 0 {
            return self.send(refuse(self, ERR_GRPC_COMPACTED)).await;
        }
        let range = match KeyRange::from_request(&req.key, &req.range_end) {
            Ok(range) => range,
            Err(reason) => return self.send(refuse(self, reason)).await,
        };
        let id = match req.watch_id {
            0 => {
                while self.watchers.contains_key(&self.next_auto_id) {
                    self.next_auto_id += 1;
                }
                let id = self.next_auto_id;
                self.next_auto_id += 1;
                id
            }
            id if id < 0 => return self.send(refuse(self, ERR_INVALID_ID)).await,
            id if self.watchers.contains_key(&id) => {
                return self.send(refuse(self, ERR_DUPLICATE_ID)).await
            }
            id => id,
        };
        // start 0 means "after now"; a future start waits for that revision; a past start
        // replays history from the store.
        let next_rev = if req.start_revision == 0 || req.start_revision > current {
            req.start_revision.max(current + 1)
        } else {
            req.start_revision
        };
        let mut created = self.response(id, current);
        created.created = true;
        self.send(created).await?;

        let compact = self.hub.compact_revision();
        if req.start_revision > 0 && req.start_revision < compact {
            // As etcd: the watch is created, then canceled with the compact revision, so a
            // client knows where it can resume (after re-listing).
            return self.send(self.compacted(id, compact)).await;
        }
        tracing::debug!(id, next_rev, "watch created");
        let mut w = Watcher::new(id, &req, range, next_rev);
        if w.prev_kv {
            w.prev_kv_guard = Some(self.hub.prev_kv_guard());
        }
        self.watchers.insert(id, w);
        Ok(())
    }

    fn compacted(&self, id: i64, compact_revision: i64) -> WatchResponse {
        let mut resp = self.response(id, self.hub.current_revision());
        resp.canceled = true;
        resp.compact_revision = compact_revision;
        resp.cancel_reason = ERR_COMPACTED.to_string();
        resp
    }

    /// Brings every watcher up to the hub's current revision (bounded rounds, see
    /// [`MAX_ROUNDS_PER_PUMP`]), round-robin so one far-behind watcher does not starve the
    /// others of its stream.
    async fn pump(&mut self) -> Result<(), Stop> {
        for _ in 0..MAX_ROUNDS_PER_PUMP {
            let current = self.hub.current_revision();
            let behind: Vec<i64> = self
                .watchers
                .values()
                .filter(|w| w.next_rev <= current)
                .map(|w| w.id)
                .collect();
            if behind.is_empty() {
                break;
            }
            for id in behind {
                self.advance(id).await?;
            }
        }
        self.flush_progress_request().await
    }

    /// Delivers one chunk (ring or one store batch) to watcher `id`.
    async fn advance(&mut self, id: i64) -> Result<(), Stop> {
        let Some(w) = self.watchers.get(&id) else {
            return Ok(());
        };
        let chunk = match self.hub.read(w.next_rev, w.prev_kv) {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return Ok(()),
            Err(WatchSourceError::Compacted { compact_revision }) => {
                // The watcher fell behind a compaction: etcd cancels it the same way.
                self.watchers.remove(&id);
                return self.send(self.compacted(id, compact_revision)).await;
            }
            Err(e @ WatchSourceError::Unavailable(_)) => {
                return Err(Stop::Failed(Status::unavailable(e.to_string())));
            }
        };
        if chunk.from_store {
            tracing::trace!(
                id,
                from = chunk.from,
                upto = chunk.upto,
                "watch catch-up from store"
            );
        }
        let events = chunk.fields(w);
        let (fragment, upto) = (w.fragment, chunk.upto);
        if let Some(w) = self.watchers.get_mut(&id) {
            w.next_rev = upto + 1;
            w.sent_since_tick |= !events.is_empty();
        }
        if events.is_empty() {
            return Ok(());
        }
        for mut resp in split_responses(id, events, upto, fragment, self.config.max_response_bytes)
        {
            resp.head.header = Some(self.header.header(resp_revision(&resp)));
            self.send_encoded(resp).await?;
        }
        Ok(())
    }

    /// Answers a pending WatchProgressRequest once every watcher of the stream is synced.
    ///
    /// etcd 3.4 answered at once with the current revision even when a watcher was still
    /// catching up, which could let a client believe it had seen events it had not; etcd 3.5+
    /// answers only when all watchers are synced and defers otherwise. We do the latter, and
    /// like 3.4 also answer a stream with no watchers.
    async fn flush_progress_request(&mut self) -> Result<(), Stop> {
        if !self.progress_pending {
            return Ok(());
        }
        let current = self.hub.current_revision();
        if self.watchers.values().all(|w| w.next_rev > current) {
            self.progress_pending = false;
            self.send(self.response(INVALID_WATCH_ID, current)).await?;
        }
        Ok(())
    }

    /// Periodic progress notify: a synced watcher that asked for it and was sent nothing since
    /// the previous tick gets an empty response at the current revision (a bookmark).
    async fn progress_tick(&mut self) -> Result<(), Stop> {
        let current = self.hub.current_revision();
        let mut due = Vec::new();
        for w in self.watchers.values_mut() {
            if !w.progress_notify {
                continue;
            }
            if !w.sent_since_tick && w.next_rev > current {
                due.push(w.id);
            }
            w.sent_since_tick = false;
        }
        for id in due {
            self.send(self.response(id, current)).await?;
        }
        Ok(())
    }
}

/// The header revision a split response carries; stashed in `header` by `split_responses`.
fn resp_revision(resp: &EncodedWatchResponse) -> i64 {
    resp.head.header.as_ref().map_or(0, |h| h.revision)
}

/// Room left for the header, watch id and flags of a response.
const RESPONSE_OVERHEAD: usize = 128;

/// Packs a watcher's events (ordered, `mod_revision <= upto`) into responses of at most
/// `max_bytes` each, never splitting a revision unless `fragment` is set, in which case a
/// revision too big for one response is sent as fragments (`fragment = true` on all but the
/// last) with at least one event each, like etcd's `sendFragments`.
///
/// Each response's header revision (stored as a bare `ResponseHeader` for the caller to fill)
/// is the last revision it completes: the final response claims `upto`, earlier ones only their
/// own last revision, so a client that loses the stream midway never resumes past an event it
/// did not get.
pub(crate) fn split_responses(
    watch_id: i64,
    events: Vec<EventField>,
    upto: i64,
    fragment: bool,
    max_bytes: usize,
) -> Vec<EncodedWatchResponse> {
    let budget = max_bytes.saturating_sub(RESPONSE_OVERHEAD).max(1);
    let rev_of = |e: &EventField| e.rev;
    let event_wire_len = |e: &EventField| e.bytes.len();
    let make = |events: Vec<EventField>, revision: i64, fragment: bool| EncodedWatchResponse {
        head: WatchResponse {
            header: Some(kelson_etcdpb::etcdserverpb::ResponseHeader {
                revision,
                ..Default::default()
            }),
            watch_id,
            fragment,
            ..Default::default()
        },
        events: events.into_iter().map(|e| e.bytes).collect(),
    };

    // Group into whole revisions with their sizes.
    let mut runs: Vec<(Vec<EventField>, usize)> = Vec::new();
    for ev in events {
        let size = event_wire_len(&ev);
        match runs.last_mut() {
            Some((run, run_size)) if run.last().map(rev_of) == Some(rev_of(&ev)) => {
                run.push(ev);
                *run_size += size;
            }
            _ => runs.push((vec![ev], size)),
        }
    }

    let mut out = Vec::new();
    let mut group: Vec<EventField> = Vec::new();
    let mut group_size = 0usize;
    let last_run = runs.len().saturating_sub(1);
    for (i, (run, run_size)) in runs.into_iter().enumerate() {
        if !group.is_empty() && group_size + run_size > budget {
            let rev = group.last().map(rev_of).unwrap_or(upto);
            out.push(make(std::mem::take(&mut group), rev, false));
            group_size = 0;
        }
        if fragment && run_size > budget && run.len() > 1 {
            // Flush what precedes, then send this revision in fragments.
            if !group.is_empty() {
                let rev = group.last().map(rev_of).unwrap_or(upto);
                out.push(make(std::mem::take(&mut group), rev, false));
                group_size = 0;
            }
            let rev = if i == last_run {
                upto
            } else {
                run.last().map(rev_of).unwrap_or(upto)
            };
            let mut part: Vec<EventField> = Vec::new();
            let mut part_size = 0usize;
            for ev in run {
                let size = event_wire_len(&ev);
                if !part.is_empty() && part_size + size > budget {
                    out.push(make(std::mem::take(&mut part), rev, true));
                    part_size = 0;
                }
                part_size += size;
                part.push(ev);
            }
            out.push(make(part, rev, false));
            continue;
        }
        group.extend(run);
        group_size += run_size;
    }
    if !group.is_empty() {
        out.push(make(group, upto, false));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kelson_etcdpb::mvccpb::{Event, KeyValue};
    use prost::Message;

    fn ev(rev: i64, size: usize) -> EventField {
        EventField::encode(&Event {
            r#type: 0,
            kv: Some(KeyValue {
                key: format!("k{rev}").into_bytes(),
                value: vec![b'x'; size],
                mod_revision: rev,
                ..Default::default()
            }),
            prev_kv: None,
        })
    }

    fn revs(resp: &EncodedWatchResponse) -> Vec<i64> {
        resp.clone()
            .into_response()
            .unwrap()
            .events
            .iter()
            .map(|e| e.kv.as_ref().unwrap().mod_revision)
            .collect()
    }

    #[test]
    fn small_batches_go_in_one_response_at_upto() {
        let out = split_responses(7, vec![ev(2, 10), ev(3, 10), ev(3, 10)], 9, false, 1 << 20);
        assert_eq!(out.len(), 1);
        assert_eq!(revs(&out[0]), vec![2, 3, 3]);
        assert_eq!(resp_revision(&out[0]), 9);
        assert_eq!(out[0].head.watch_id, 7);
        assert!(!out[0].head.fragment);
    }

    #[test]
    fn splits_between_revisions_but_never_inside_one_without_fragment() {
        let events = vec![ev(2, 600), ev(3, 600), ev(3, 600), ev(3, 600), ev(4, 600)];
        let out = split_responses(1, events, 5, false, 1500);
        let all: Vec<Vec<i64>> = out.iter().map(revs).collect();
        assert_eq!(all, vec![vec![2], vec![3, 3, 3], vec![4]]);
        // Intermediate responses claim only their own last revision.
        let heads: Vec<i64> = out.iter().map(resp_revision).collect();
        assert_eq!(heads, vec![2, 3, 5]);
        assert!(out.iter().all(|r| !r.head.fragment));
    }

    #[test]
    fn fragments_a_big_revision_when_asked() {
        let events = vec![ev(3, 600), ev(3, 600), ev(3, 600), ev(3, 600)];
        let out = split_responses(1, events, 3, true, 1500);
        assert!(out.len() >= 2, "{} responses", out.len());
        let (last, rest) = out.split_last().unwrap();
        assert!(rest.iter().all(|r| r.head.fragment));
        assert!(!last.head.fragment);
        let total: usize = out.iter().map(|r| r.events.len()).sum();
        assert_eq!(total, 4);
        assert!(out.iter().all(|r| r.encoded_len() <= 1500 + 64));
    }

    #[test]
    fn a_single_oversized_event_is_sent_whole() {
        let out = split_responses(1, vec![ev(3, 5000)], 3, true, 1500);
        assert_eq!(out.len(), 1);
        assert!(!out[0].head.fragment);
    }
}
