//! Watches: etcd watch events become Kubernetes watch events, as upstream's etcd3 `watcher.go`.
//!
//! - The etcd watch starts at `from_rv + 1` with `prev_kv`, so every event carries the value
//!   before it; `from_rv == 0` means "from now" (the current revision + 1).
//! - A PUT that created the key (`create_revision == mod_revision`) is ADDED, any other PUT is
//!   MODIFIED, a DELETE is DELETED carrying the previous value with the deletion's revision.
//! - With a filter, `prev_kv` gives the transitions: an object that stops matching is DELETED
//!   (its previous content, at the event's revision — as upstream) and one that starts matching
//!   is ADDED; events where neither matches are dropped.
//! - Bookmarks: the etcd watch asks for progress notifications, and every `bookmark_interval`
//!   the stream sends a progress request; an event-less response is a promise that everything
//!   up to its header revision was delivered, which is exactly a BOOKMARK's meaning. Only the
//!   revision is emitted; the handler builds the kind-specific bookmark object.
//! - A compacted start revision ends the stream with one 410 Expired error event, like the
//!   watch cache's "too old resource version: X (Y)". Any other failure ends it with one error.
//! - The stream owns the etcd watch: dropping it cancels the watch on the store.

use std::sync::Arc;

use etcd_client::{Event, EventType, WatchOptions};
use futures::stream::BoxStream;
use serde_json::Value;

use crate::error::etcd_error;
use crate::{Storage, StorageError};

/// A watch filter (field/label selectors). `None` matches everything.
pub type WatchFilter = Option<Arc<dyn Fn(&Value) -> bool + Send + Sync>>;

/// One Kubernetes watch event. Objects carry `metadata.resourceVersion`.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    Added(Value),
    Modified(Value),
    Deleted(Value),
    /// Everything up to this revision has been delivered.
    Bookmark(i64),
    /// The last event of a failed watch (410 Expired for a compacted start revision).
    Error(StorageError),
}

impl Storage {
    /// Watches `key` (or every key under it with `recursive`, a trailing "/" is added) for
    /// changes after revision `from_rv` (0 = from now).
    pub async fn watch(
        &self,
        key: &str,
        recursive: bool,
        from_rv: i64,
        filter: WatchFilter,
        bookmarks: bool,
    ) -> Result<BoxStream<'static, WatchEvent>, StorageError> {
        if from_rv < 0 {
            return Err(StorageError::BadRequest(format!(
                "invalid resource version: {from_rv}"
            )));
        }
        let mut key = self.prepare_key(key)?;
        if recursive && !key.ends_with('/') {
            key.push('/');
        }
        let start = if from_rv == 0 {
            self.current_revision().await? + 1
        } else {
            from_rv + 1
        };
        let mut opts = WatchOptions::new()
            .with_start_revision(start)
            .with_prev_key();
        if recursive {
            opts = opts.with_prefix();
        }
        if bookmarks {
            opts = opts.with_progress_notify();
        }
        let mut client = self.client.watch_client();
        let stream = self
            .timed(client.watch(key.as_str(), Some(opts)))
            .await?
            .map_err(|e| etcd_error(e, "too old resource version"))?;
        let (mut requests, mut responses) = stream.split();
        let interval = self.config.bookmark_interval;

        let this = self.clone();
        // A requested progress notification may run ahead of events on stores without the fix
        // for etcd-io/etcd#15220: a bookmark from it could make a client resume past events it
        // never got. There, bookmarks come only from the store's own periodic notifications.
        let request_progress = bookmarks && self.progress_is_ordered().await;
        let events = async_stream::stream! {
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Bookmarks never go backwards past an event already sent.
            let mut last_rev = start - 1;
            'outer: loop {
                tokio::select! {
                    _ = ticker.tick(), if request_progress => {
                        if let Err(e) = requests.request_progress().await {
                            yield WatchEvent::Error(etcd_error(e, "too old resource version"));
                            break;
                        }
                    }
                    msg = responses.message() => {
                        let resp = match msg {
                            Ok(Some(r)) => r,
                            // The store closed the stream: end it; clients re-watch.
                            Ok(None) => break,
                            Err(e) => {
                                yield WatchEvent::Error(etcd_error(e, "too old resource version"));
                                break;
                            }
                        };
                        if resp.compact_revision() != 0 {
                            yield WatchEvent::Error(StorageError::Expired {
                                message: format!(
                                    "too old resource version: {from_rv} ({})",
                                    resp.compact_revision()
                                ),
                                continue_token: None,
                            });
                            break;
                        }
                        if resp.canceled() {
                            yield WatchEvent::Error(StorageError::Internal(format!(
                                "watch canceled by the store: {}",
                                resp.cancel_reason()
                            )));
                            break;
                        }
                        if resp.created() && resp.events().is_empty() {
                            continue;
                        }
                        if resp.events().is_empty() {
                            let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
                            if bookmarks && rev > 0 && rev >= last_rev {
                                last_rev = rev;
                                yield WatchEvent::Bookmark(rev);
                            }
                            continue;
                        }
                        for ev in resp.events() {
                            match transform(&this, ev, filter.as_deref()) {
                                Ok(Some((rev, e))) => {
                                    last_rev = last_rev.max(rev);
                                    yield e;
                                }
                                Ok(None) => {
                                    if let Some(kv) = ev.kv() {
                                        last_rev = last_rev.max(kv.mod_revision());
                                    }
                                }
                                Err(e) => {
                                    yield WatchEvent::Error(e);
                                    break 'outer;
                                }
                            }
                        }
                    }
                }
            }
        };
        Ok(Box::pin(events))
    }
}

type Filter<'a> = Option<&'a (dyn Fn(&Value) -> bool + Send + Sync)>;

/// Upstream's `watchChan.transform` for one etcd event; `None` = filtered out.
fn transform(
    s: &Storage,
    ev: &Event,
    filter: Filter<'_>,
) -> Result<Option<(i64, WatchEvent)>, StorageError> {
    let kv = ev
        .kv()
        .ok_or_else(|| StorageError::Internal("etcd watch event without a key-value".into()))?;
    let rev = kv.mod_revision();
    let passes = |o: &Value| filter.is_none_or(|f| f(o));
    let is_create = ev.event_type() == EventType::Put && kv.create_revision() == rev;
    let prev = match ev.prev_kv() {
        Some(p) => Some(p),
        None if is_create => None,
        None => {
            // E.g. the previous value was compacted away: the transition is unknowable.
            return Err(StorageError::Internal(format!(
                "etcd event received with PrevKv=nil (key={:?}, modRevision={rev}, type={:?})",
                String::from_utf8_lossy(kv.key()),
                ev.event_type()
            )));
        }
    };
    // The previous object is reported at the event's revision (upstream's prepareObjects).
    let old = |p: &etcd_client::KeyValue| s.decode_kv(p.key(), p.value(), rev);
    let out = match ev.event_type() {
        EventType::Delete => {
            let Some(p) = prev else { return Ok(None) };
            let o = old(p)?;
            passes(&o).then_some(WatchEvent::Deleted(o))
        }
        EventType::Put => {
            let cur = s.decode_kv(kv.key(), kv.value(), rev)?;
            if is_create {
                passes(&cur).then_some(WatchEvent::Added(cur))
            } else if filter.is_none() {
                Some(WatchEvent::Modified(cur))
            } else {
                let Some(p) = prev else { return Ok(None) };
                let o = old(p)?;
                match (passes(&cur), passes(&o)) {
                    (true, true) => Some(WatchEvent::Modified(cur)),
                    (true, false) => Some(WatchEvent::Added(cur)),
                    (false, true) => Some(WatchEvent::Deleted(o)),
                    (false, false) => None,
                }
            }
        }
    };
    Ok(out.map(|e| (rev, e)))
}
