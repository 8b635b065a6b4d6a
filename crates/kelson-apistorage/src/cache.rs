//! The watch cache: one store watch per resource, every client LIST and watch served from it,
//! as upstream's `cacher` / `watchCache` (k8s.io/apiserver/pkg/storage/cacher).
//!
//! Design:
//! - A [`WatchCache`] covers one key prefix (one resource, e.g. `/registry/pods/`). Its task
//!   LISTs the prefix at a revision R, then watches the store from R+1 (no `prev_kv`: the cache
//!   holds the previous objects itself) and applies every event to an ordered map of current
//!   objects plus a bounded ring of recent events. Any store watch failure (stream end,
//!   compaction, cancel) re-LISTs; streams served from the old state end, and their clients
//!   re-watch from their last resourceVersion like after any watch end.
//! - Objects are decoded and encoded **once per write**: a [`CachedObject`] keeps the JSON bytes
//!   (with `metadata.resourceVersion` set) shared by `Arc`, so a LIST is a concatenation of
//!   stored bytes and a watch event is written to every watcher without re-serialisation, plus
//!   a small "selectable view" (metadata name/namespace/labels and the kind's field-selector
//!   fields, built by the API server's [`ViewFn`]) on which label and field selectors run.
//! - Fan-out: each client watch is a cursor (an event sequence number) into the ring, woken by
//!   a `tokio::sync::watch` channel carrying the cache revision. A watcher costs a task and its
//!   HTTP buffer, not a store watch. A watch from a resourceVersion older than the ring (or a
//!   watcher so slow the ring overtook it) gets 410 Expired "too old resource version", as
//!   upstream; bookmarks carry the cache revision, which progress notifications advance even
//!   when this resource does not change.
//! - Consistency as upstream 1.31+ ("consistent reads from cache"): a LIST with
//!   resourceVersion "" reads the store's current revision (a linearizable read) and waits until
//!   the cache has caught up to it, asking the store for a progress notification so a quiet
//!   resource still advances; if that takes longer than [`CONSISTENT_WAIT`] the caller falls back
//!   to the store. resourceVersion "0" is served at once; a NotOlderThan version waits for it.
//!   Only from a store whose progress answers come after the events they cover
//!   ([`Storage::progress_is_ordered`]: etcd 3.4.31+/3.5.13+, kelson-kv): with an older etcd a
//!   consistent LIST goes to the store, and the cache does not request progress at all (events
//!   and the store's periodic notifications move it), as upstream's feature-support checker.
//!   `resourceVersionMatch=Exact` and legacy exact paged lists go to the store; a `continue`
//!   token is served from the cache when nothing under the prefix changed since the token's
//!   revision (the cache then *is* that revision), otherwise from the store at that revision.
//! - GET as upstream's cacher: resourceVersion "0" is any state the cache holds, a version N
//!   waits until the cache has reached N; "" (the latest) is the caller's linearizable store read.
//! - Read-your-own-writes ([`WatchCache::get_own_writes`], [`WatchCache::list_own_writes`]):
//!   what admission plugins read, where upstream reads informers. The cache waits only for the
//!   newest write this server made *under its own prefix* (`crate::writes`), so a namespace
//!   lookup does not wait for the pod this server wrote a microsecond ago.
//! - The ring is sized like upstream's: it starts small and doubles while its oldest event is
//!   younger than [`EVENT_FRESH`] (so a watch may resume from anything in the last 75 s), and
//!   halves when its newest quarter already spans more than that; bounded by the capacity
//!   given at start (the memory bound: every event may hold an old version of an object).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use etcd_client::{EventType as EtcdEventType, GetOptions, WatchOptions};
use futures::stream::BoxStream;
use serde_json::Value;
use tokio::sync::{watch, Notify};
use tracing::{debug, warn};

use crate::codec::{parse_resource_version, set_resource_version};
use crate::continue_token::{decode_continue, encode_continue};
use crate::error::etcd_error;
use crate::store::prefix_end;
use crate::{ListOptions, ResourceVersionMatch, Storage, StorageError};

/// How long a consistent read waits for the cache to reach the store's revision before the
/// caller falls back to the store (upstream: 3 s, then a fallback to etcd).
pub const CONSISTENT_WAIT: Duration = Duration::from_secs(3);

/// Default upper bound of a resource's ring (upstream's is 100k events; each event may hold an
/// old version of an object, so a lower bound keeps memory predictable under a write storm).
pub const DEFAULT_CAPACITY: usize = 8192;

/// The ring's lower bound (upstream's `defaultLowerBoundCapacity`).
pub const MIN_CAPACITY: usize = 100;

/// How much history the ring tries to keep (upstream's `eventFreshDuration`).
pub const EVENT_FRESH: Duration = Duration::from_secs(75);

/// Builds the selectable representation of an object (what selectors are evaluated on).
pub type ViewFn = Arc<dyn Fn(&Value) -> Value + Send + Sync>;

/// A predicate over the selectable view. `None` matches everything.
pub type ViewFilter = Option<Arc<dyn Fn(&Value) -> bool + Send + Sync>>;

/// One object as the cache holds it.
#[derive(Debug)]
pub struct CachedObject {
    /// The full store key.
    pub key: String,
    /// The object's resourceVersion (for a DELETED event: the deletion's revision).
    pub rev: i64,
    /// The object's JSON, `metadata.resourceVersion` included.
    pub json: Bytes,
    /// What selectors see (see [`ViewFn`]).
    pub view: Value,
    /// The decoded object, kept once [`CachedObject::shared_value`] asked for it: admission
    /// reads the same few objects (a namespace, a service account) for every create, and
    /// decoding them each time was a JSON parse per lookup. Filled only on demand, so the
    /// cache of a big resource does not hold every object twice.
    tree: OnceLock<Arc<Value>>,
}

impl CachedObject {
    /// The object decoded (for formats that need the tree: Table, YAML, metadata-only).
    pub fn value(&self) -> Result<Value, StorageError> {
        serde_json::from_slice(&self.json).map_err(|e| StorageError::Internal(e.to_string()))
    }

    /// The object decoded once and shared (see the `tree` field): for readers that only
    /// look, such as admission plugins.
    pub fn shared_value(&self) -> Result<Arc<Value>, StorageError> {
        if let Some(t) = self.tree.get() {
            return Ok(t.clone());
        }
        let t = Arc::new(self.value()?);
        Ok(self.tree.get_or_init(|| t).clone())
    }

    /// The same object reported at another revision (a DELETED event carries the deletion's).
    fn at_rev(&self, rev: i64) -> Result<CachedObject, StorageError> {
        let mut v = self.value()?;
        set_resource_version(&mut v, rev);
        Ok(CachedObject {
            key: self.key.clone(),
            rev,
            json: Bytes::from(
                serde_json::to_vec(&v)
                    .map_err(|e| StorageError::Internal(format!("encoding {}: {e}", self.key)))?,
            ),
            view: self.view.clone(),
            tree: OnceLock::new(),
        })
    }
}

/// The type of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// `{"type":T,"object":OBJ}\n`: one line of the JSON watch stream, spliced from bytes.
pub fn json_frame(ty: &str, obj: &[u8]) -> Bytes {
    let mut b = Vec::with_capacity(obj.len() + ty.len() + 24);
    b.extend_from_slice(b"{\"type\":\"");
    b.extend_from_slice(ty.as_bytes());
    b.extend_from_slice(b"\",\"object\":");
    b.extend_from_slice(obj);
    b.extend_from_slice(b"}\n");
    Bytes::from(b)
}

/// One change in the ring.
#[derive(Debug)]
struct Event {
    seq: u64,
    rev: i64,
    /// When the cache applied it (the ring keeps [`EVENT_FRESH`] of history).
    at: Instant,
    ty: EventType,
    /// The new object (for DELETED: the last state, at the deletion's revision).
    obj: Arc<CachedObject>,
    /// The object before the change (MODIFIED only), for filtered watches' transitions.
    prev: Option<Arc<CachedObject>>,
    /// The event's own JSON frame, built once for every watcher that sees it unchanged.
    frame: OnceLock<Bytes>,
    /// `prev` at this event's revision (a filtered watch's synthetic DELETED), built once.
    prev_at_rev: OnceLock<Arc<CachedObject>>,
}

impl Event {
    fn frame(&self) -> Bytes {
        self.frame
            .get_or_init(|| json_frame(self.ty.as_str(), &self.obj.json))
            .clone()
    }
}

/// What a client watch receives.
#[derive(Debug, Clone)]
pub enum CacheWatchEvent {
    /// An object event; `frame` is its ready JSON watch line.
    Object {
        ty: EventType,
        obj: Arc<CachedObject>,
        frame: Bytes,
    },
    /// Everything up to this revision has been delivered.
    Bookmark(i64),
    /// The last event of a failed watch (410 Expired when the ring moved past it).
    Error(StorageError),
}

/// A page of a LIST served from the cache.
#[derive(Debug, Clone)]
pub struct CachedList {
    pub items: Vec<Arc<CachedObject>>,
    pub resource_version: i64,
    pub continue_token: Option<String>,
    pub remaining_item_count: Option<i64>,
}

/// Where a client watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchStart {
    /// After this revision (the client's resourceVersion).
    After(i64),
    /// The current state as ADDED events, then changes; `consistent` first waits for the
    /// cache to reach the store's revision (resourceVersion ""), otherwise any state
    /// (resourceVersion "0").
    Now { consistent: bool },
}

#[derive(Default)]
struct State {
    ready: bool,
    /// Bumped on every (re-)LIST: streams of an older generation end.
    generation: u64,
    /// Every change up to this revision is applied.
    rev: i64,
    /// The newest revision that changed anything under the prefix.
    last_change: i64,
    objects: BTreeMap<String, Arc<CachedObject>>,
    ring: VecDeque<Arc<Event>>,
    /// The ring's current capacity (between the bounds, see [`State::push`]).
    cap: usize,
    next_seq: u64,
    /// The ring holds every event after this revision.
    oldest: i64,
}

impl State {
    /// Appends `ev`, resizing the ring as upstream's `resizeCacheLocked` when it is full:
    /// double while the oldest event is fresher than [`EVENT_FRESH`], halve when even the
    /// newest quarter is older; then evicts down to the capacity.
    fn push(&mut self, (lo, hi): (usize, usize), ev: Event) {
        let lo = lo.clamp(1, hi.max(1));
        let hi = hi.max(lo);
        self.cap = self.cap.clamp(lo, hi);
        if self.ring.len() >= self.cap {
            let age = |e: &Event| ev.at.saturating_duration_since(e.at);
            let oldest_fresh = self.ring.front().is_some_and(|e| age(e) < EVENT_FRESH);
            if oldest_fresh && self.cap < hi {
                self.cap = (self.cap * 2).min(hi);
            } else if !oldest_fresh && self.cap > lo {
                let newest_quarter = self.ring.len() - (self.cap / 4).max(1);
                if self
                    .ring
                    .get(newest_quarter)
                    .is_some_and(|e| age(e) > EVENT_FRESH)
                {
                    self.cap = (self.cap / 2).max(lo);
                }
            }
        }
        self.ring.push_back(Arc::new(ev));
        while self.ring.len() > self.cap {
            if let Some(e) = self.ring.pop_front() {
                self.oldest = self.oldest.max(e.rev);
            }
        }
        if self.ring.capacity() > 2 * self.cap.max(64) {
            self.ring.shrink_to(self.cap);
        }
    }

    /// The first ring sequence number with a revision after `rev`.
    fn seq_after(&self, rev: i64) -> u64 {
        let i = self.ring.partition_point(|e| e.rev <= rev);
        self.ring.get(i).map(|e| e.seq).unwrap_or(self.next_seq)
    }
}

struct Shared {
    store: Storage,
    /// The prepared key prefix, ending in "/".
    prefix: String,
    view: ViewFn,
    /// The ring's bounds (lower, upper).
    capacity: (usize, usize),
    /// The revision of this server's newest write under `prefix` (`crate::writes`).
    own_writes: Arc<AtomicI64>,
    state: RwLock<State>,
    /// The cache revision when ready, 0 while (re-)listing. The sender lives in the task, so
    /// streams end when the cache is dropped.
    rev_rx: watch::Receiver<i64>,
    /// Asks the task for a progress notification from the store.
    progress: Notify,
}

struct Handle {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The watch cache of one key prefix. Cheap to clone; the store watch stops when the last
/// clone is dropped.
#[derive(Clone)]
pub struct WatchCache {
    h: Arc<Handle>,
}

impl std::fmt::Debug for WatchCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchCache")
            .field("prefix", &self.h.shared.prefix)
            .finish()
    }
}

impl WatchCache {
    /// Starts caching everything under `prefix` (a trailing "/" is added). `capacity` is the
    /// upper bound of the event ring (see the module doc for its sizing).
    pub fn start(
        store: &Storage,
        prefix: &str,
        view: ViewFn,
        capacity: usize,
    ) -> Result<WatchCache, StorageError> {
        let mut prefix = store.prepare_key(prefix)?;
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        let (rev_tx, rev_rx) = watch::channel(0);
        let own_writes = store.write_mark(&prefix);
        let hi = capacity.max(1);
        let shared = Arc::new(Shared {
            store: store.clone(),
            prefix,
            view,
            capacity: (MIN_CAPACITY.min(hi), hi),
            own_writes,
            state: RwLock::new(State::default()),
            rev_rx,
            progress: Notify::new(),
        });
        let task = tokio::spawn(run(shared.clone(), rev_tx));
        Ok(WatchCache {
            h: Arc::new(Handle { shared, task }),
        })
    }

    fn s(&self) -> &Shared {
        &self.h.shared
    }

    /// The revision the cache has reached (0 while listing).
    pub fn revision(&self) -> i64 {
        *self.s().rev_rx.borrow()
    }

    /// The oldest revision a watch may start after.
    pub fn oldest_revision(&self) -> i64 {
        self.s().state.read().map(|s| s.oldest).unwrap_or(0)
    }

    /// Number of cached objects.
    pub fn len(&self) -> usize {
        self.s().state.read().map(|s| s.objects.len()).unwrap_or(0)
    }

    /// Whether the cache holds no object.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until the cache has applied everything up to `want`, asking the store for
    /// progress notifications meanwhile. False on timeout.
    pub async fn wait_for(&self, want: i64, timeout: Duration) -> bool {
        let mut rx = self.s().rev_rx.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let cur = *rx.borrow_and_update();
            if cur > 0 && cur >= want {
                return true;
            }
            if cur > 0 {
                self.s().progress.notify_one();
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return false },
                _ = tokio::time::sleep_until(deadline) => return false,
            }
        }
    }

    /// Consistent read: waits for the cache to reach the store's current revision.
    pub async fn wait_fresh(&self, timeout: Duration) -> Result<bool, StorageError> {
        let want = self.s().store.current_revision().await?;
        Ok(self.wait_for(want, timeout).await)
    }

    /// 410 Expired if the store has compacted the revisions after `rv`.
    async fn check_not_compacted(&self, rv: i64) -> Result<(), StorageError> {
        let s = self.s();
        let mut kv = s.store.client.kv_client();
        let probe = format!("{}/kelson-apistorage-revision-probe", s.store.config.prefix);
        let opts = GetOptions::new()
            .with_keys_only()
            .with_limit(1)
            .with_revision(rv + 1);
        let msg = format!("too old resource version: {rv}");
        s.store
            .timed(kv.get(probe.as_str(), Some(opts)))
            .await?
            .map_err(|e| etcd_error(e, &msg))?;
        Ok(())
    }

    /// Every object under `prefix`, from the cache once it holds every write this server made
    /// (read-your-own-writes without a store round trip: what admission plugins need, where
    /// upstream reads informers). `None` if the cache does not get there in time.
    pub async fn list_own_writes(
        &self,
        prefix: &str,
    ) -> Result<Option<Vec<Arc<CachedObject>>>, StorageError> {
        let s = self.s();
        let mut prefix = s.store.prepare_key(prefix)?;
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        if !prefix.starts_with(&s.prefix) {
            return Ok(None);
        }
        if !self.wait_own_writes().await {
            return Ok(None);
        }
        let st = s.state.read().map_err(poisoned)?;
        if !st.ready {
            return Ok(None);
        }
        let page = page(
            &st,
            &prefix,
            Bound::Included(prefix.clone()),
            st.rev,
            0,
            None,
        )?;
        Ok(Some(page.items))
    }

    /// Waits until the cache holds every write this server made under its prefix.
    async fn wait_own_writes(&self) -> bool {
        let want = self.s().own_writes.load(Ordering::Acquire).max(1);
        self.wait_for(want, CONSISTENT_WAIT).await
    }

    /// The (prepared) key if it is under this cache's prefix.
    fn own_key(&self, key: &str) -> Result<Option<String>, StorageError> {
        let key = self.s().store.prepare_key(key)?;
        Ok(key.starts_with(&self.s().prefix).then_some(key))
    }

    /// One object, once the cache holds every write this server made under its prefix (see
    /// [`WatchCache::list_own_writes`]): `Ok(None)` if the cache cannot answer in time (read
    /// the store), `Ok(Some(None))` if there is no such object.
    pub async fn get_own_writes(
        &self,
        key: &str,
    ) -> Result<Option<Option<Arc<CachedObject>>>, StorageError> {
        let Some(key) = self.own_key(key)? else {
            return Ok(None);
        };
        if !self.wait_own_writes().await {
            return Ok(None);
        }
        let st = self.s().state.read().map_err(poisoned)?;
        if !st.ready {
            return Ok(None);
        }
        Ok(Some(st.objects.get(&key).cloned()))
    }

    /// The cache's current copy of one object, without waiting: a possibly stale starting
    /// point for a guaranteed update (which re-reads the store when the copy turns out stale).
    pub fn peek(&self, key: &str) -> Option<Arc<CachedObject>> {
        let key = self.own_key(key).ok()??;
        let st = self.s().state.read().ok()?;
        if !st.ready {
            return None;
        }
        st.objects.get(&key).cloned()
    }

    /// Serves a GET of `key` at resourceVersion `rv` from the cache as upstream's cacher: "0"
    /// is whatever the cache holds, N waits until the cache has reached N (a version newer than
    /// the store's is `TooLargeResourceVersion`). `Ok(None)`: read the store instead (rv "", an
    /// unparsable version, or a cache that is not ready in time); `Ok(Some(None))`: not found.
    pub async fn get(
        &self,
        key: &str,
        rv: &str,
    ) -> Result<Option<Option<Arc<CachedObject>>>, StorageError> {
        if rv.is_empty() {
            return Ok(None);
        }
        let Some(key) = self.own_key(key)? else {
            return Ok(None);
        };
        let Ok(want) = parse_resource_version(rv) else {
            return Ok(None); // the store gives the error
        };
        let want = want as i64;
        if want > self.revision() && self.revision() > 0 {
            let current = self.s().store.current_revision().await?;
            if want > current {
                return Err(StorageError::TooLargeResourceVersion {
                    requested: want as u64,
                    current: current as u64,
                });
            }
        }
        if !self.wait_for(want.max(1), CONSISTENT_WAIT).await {
            return Ok(None);
        }
        let st = self.s().state.read().map_err(poisoned)?;
        if !st.ready {
            return Ok(None);
        }
        Ok(Some(st.objects.get(&key).cloned()))
    }

    /// Serves a LIST of `prefix` (the resource's prefix or a namespace under it) from the
    /// cache, or `Ok(None)` when it must go to the store (see the module doc for which).
    pub async fn list(
        &self,
        prefix: &str,
        opts: &ListOptions,
        filter: Option<&(dyn Fn(&Value) -> bool + Send + Sync)>,
    ) -> Result<Option<CachedList>, StorageError> {
        let s = self.s();
        let mut prefix = s.store.prepare_key(prefix)?;
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        if !prefix.starts_with(&s.prefix) {
            return Ok(None);
        }
        let rv = opts.resource_version.as_deref().filter(|v| !v.is_empty());
        let continuing = opts
            .continue_token
            .as_deref()
            .is_some_and(|c| !c.is_empty());
        if opts.resource_version_match == Some(ResourceVersionMatch::Exact) || opts.limit < 0 {
            return Ok(None);
        }
        if continuing {
            if opts.resource_version_match.is_some() || rv.is_some_and(|v| v != "0") {
                return Ok(None); // the store gives the errors
            }
            let token = opts.continue_token.as_deref().unwrap_or_default();
            let Ok((start, token_rv)) = decode_continue(token, &prefix) else {
                return Ok(None);
            };
            if token_rv <= 0 {
                return Ok(None);
            }
            let st = s.state.read().map_err(poisoned)?;
            // The cache is the state at token_rv only if nothing changed since.
            if !st.ready || st.last_change > token_rv || st.rev < token_rv {
                return Ok(None);
            }
            return page(
                &st,
                &prefix,
                Bound::Included(start),
                token_rv,
                opts.limit,
                filter,
            )
            .map(Some);
        }
        match rv {
            None => {
                if !s.store.progress_is_ordered().await {
                    return Ok(None); // the cache may not know it is behind: the store
                }
                if !self.wait_fresh(CONSISTENT_WAIT).await? {
                    debug!(prefix, "consistent read: cache behind, reading the store");
                    return Ok(None);
                }
            }
            Some(v) => {
                let Ok(want) = parse_resource_version(v) else {
                    return Ok(None);
                };
                let want = want as i64;
                // Legacy: a paged list at a given version reads exactly there (store).
                if opts.resource_version_match.is_none() && opts.limit > 0 && want > 0 {
                    return Ok(None);
                }
                if want > self.revision() {
                    let current = s.store.current_revision().await?;
                    if want > current {
                        return Err(StorageError::TooLargeResourceVersion {
                            requested: want as u64,
                            current: current as u64,
                        });
                    }
                }
                if !self.wait_for(want.max(1), CONSISTENT_WAIT).await {
                    return Ok(None);
                }
            }
        }
        let st = s.state.read().map_err(poisoned)?;
        if !st.ready {
            return Ok(None);
        }
        page(
            &st,
            &prefix,
            Bound::Included(prefix.clone()),
            st.rev,
            opts.limit,
            filter,
        )
        .map(Some)
    }

    /// Watches `key` (with `recursive`, every key under it) through the cache.
    pub async fn watch(
        &self,
        key: &str,
        recursive: bool,
        start: WatchStart,
        filter: ViewFilter,
        bookmarks: bool,
        bookmark_interval: Duration,
    ) -> Result<(Vec<Arc<CachedObject>>, BoxStream<'static, CacheWatchEvent>), StorageError> {
        let s = self.h.shared.clone();
        let mut key = s.store.prepare_key(key)?;
        if recursive && !key.ends_with('/') {
            key.push('/');
        }
        // Without ordered progress the cache cannot learn that it is fresh when the newest
        // writes were elsewhere: such a "consistent" start begins at its current state, as
        // upstream did before consistent reads from cache (and does with such stores).
        let consistent = matches!(start, WatchStart::Now { consistent: true })
            && s.store.progress_is_ordered().await;
        if consistent {
            if !self.wait_fresh(CONSISTENT_WAIT).await? {
                return Err(StorageError::Timeout(
                    "the watch cache did not catch up with the store".into(),
                ));
            }
        } else if !self.wait_for(1, CONSISTENT_WAIT).await {
            return Err(StorageError::Timeout(
                "the watch cache is not initialized yet".into(),
            ));
        }
        if let WatchStart::After(rv) = start {
            // The ring may still hold revisions the store has compacted away; answering 410
            // there too keeps one meaning for "too old" whichever path serves the watch (and
            // clients relist either way). One keys-only range at the start revision tells.
            if rv < self.revision() {
                self.check_not_compacted(rv).await?;
            }
        }
        let in_scope = {
            let key = key.clone();
            move |k: &str| {
                if recursive {
                    k.starts_with(&key)
                } else {
                    k == key
                }
            }
        };
        let passes = {
            let filter = filter.clone();
            move |o: &CachedObject| filter.as_ref().is_none_or(|f| f(&o.view))
        };
        // The initial state and the cursor come from one snapshot: nothing is missed or doubled.
        let (initial, mut cursor, generation, from_rev) = {
            let st = s.state.read().map_err(poisoned)?;
            match start {
                WatchStart::After(rv) => {
                    if rv < st.oldest {
                        return Err(StorageError::Expired {
                            message: format!("too old resource version: {rv} ({})", st.oldest),
                            continue_token: None,
                        });
                    }
                    (Vec::new(), st.seq_after(rv), st.generation, rv)
                }
                WatchStart::Now { .. } => {
                    let items: Vec<_> = st
                        .objects
                        .range::<String, _>((Bound::Included(&key), Bound::Unbounded))
                        .take_while(|(k, _)| in_scope(k))
                        .filter(|(_, o)| passes(o))
                        .map(|(_, o)| o.clone())
                        .collect();
                    (items, st.next_seq, st.generation, st.rev)
                }
            }
        };
        let mut rx = s.rev_rx.clone();
        let events = async_stream::stream! {
            let mut last_sent = from_rev;
            let mut ticker = tokio::time::interval_at(
                tokio::time::Instant::now() + bookmark_interval,
                bookmark_interval,
            );
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let batch: Result<(Vec<Arc<Event>>, i64), StorageError> = (|| {
                    let st = s.state.read().map_err(poisoned)?;
                    if st.generation != generation {
                        return Ok((Vec::new(), -1));
                    }
                    let first = st.ring.front().map(|e| e.seq).unwrap_or(st.next_seq);
                    if cursor < first {
                        return Err(StorageError::Expired {
                            message: format!(
                                "too old resource version: {last_sent} ({})",
                                st.oldest
                            ),
                            continue_token: None,
                        });
                    }
                    let i = (cursor - first) as usize;
                    let evs: Vec<_> = st.ring.iter().skip(i).take(256).cloned().collect();
                    Ok((evs, st.rev))
                })();
                let (evs, cache_rev) = match batch {
                    Ok(b) => b,
                    Err(e) => {
                        yield CacheWatchEvent::Error(e);
                        break;
                    }
                };
                if cache_rev < 0 {
                    // Re-listed: the client re-watches from its last resourceVersion.
                    break;
                }
                if evs.is_empty() {
                    tokio::select! {
                        r = rx.changed() => if r.is_err() { break },
                        _ = ticker.tick(), if bookmarks => {
                            let rev = *rx.borrow();
                            // Only at the end of the ring is the cache revision a promise.
                            let at_end = s.state.read().map(|st| st.next_seq == cursor && st.generation == generation).unwrap_or(false);
                            // As the store's watch: repeated while nothing changes, so clients
                            // always have a fresh resumption point.
                            if at_end && rev >= last_sent {
                                last_sent = rev;
                                yield CacheWatchEvent::Bookmark(rev);
                            }
                        }
                    }
                    continue;
                }
                for ev in evs {
                    cursor = ev.seq + 1;
                    if !in_scope(&ev.obj.key) {
                        continue;
                    }
                    if let Some(out) = outcome(&ev, filter.is_some(), &passes) {
                        last_sent = ev.rev;
                        yield out;
                    }
                }
            }
        };
        Ok((initial, Box::pin(events)))
    }
}

/// What a (possibly filtered) watcher sees of one event: upstream's cacheWatcher conversion
/// of transitions (stops matching → DELETED with the previous object, starts → ADDED).
fn outcome(
    ev: &Event,
    filtered: bool,
    passes: &impl Fn(&CachedObject) -> bool,
) -> Option<CacheWatchEvent> {
    let natural = || CacheWatchEvent::Object {
        ty: ev.ty,
        obj: ev.obj.clone(),
        frame: ev.frame(),
    };
    if !filtered {
        return Some(natural());
    }
    let cur = passes(&ev.obj);
    match (ev.ty, &ev.prev) {
        (EventType::Modified, Some(prev)) => match (cur, passes(prev)) {
            (true, true) => Some(natural()),
            (true, false) => Some(CacheWatchEvent::Object {
                ty: EventType::Added,
                obj: ev.obj.clone(),
                frame: json_frame("ADDED", &ev.obj.json),
            }),
            (false, true) => {
                let p = ev
                    .prev_at_rev
                    .get_or_init(|| Arc::new(prev.at_rev(ev.rev).unwrap_or_else(|_| copy(prev))))
                    .clone();
                let frame = json_frame("DELETED", &p.json);
                Some(CacheWatchEvent::Object {
                    ty: EventType::Deleted,
                    obj: p,
                    frame,
                })
            }
            (false, false) => None,
        },
        _ => cur.then(natural),
    }
}

fn copy(o: &CachedObject) -> CachedObject {
    CachedObject {
        key: o.key.clone(),
        rev: o.rev,
        json: o.json.clone(),
        view: o.view.clone(),
        tree: OnceLock::new(),
    }
}

fn poisoned<T>(_: T) -> StorageError {
    StorageError::Internal("watch cache lock poisoned".into())
}

/// The first key after `k` (a continue token's start).
fn next_key(k: &str) -> String {
    let mut s = k.to_string();
    s.push('\0');
    s
}

/// One page of the objects under `prefix` from `start`, read at `rev`.
fn page(
    st: &State,
    prefix: &str,
    start: Bound<String>,
    rev: i64,
    limit: i64,
    filter: Option<&(dyn Fn(&Value) -> bool + Send + Sync)>,
) -> Result<CachedList, StorageError> {
    let end = String::from_utf8(prefix_end(prefix.as_bytes())).unwrap_or_default();
    let end = if end.as_bytes() == [0] {
        Bound::Unbounded
    } else {
        Bound::Excluded(end)
    };
    let mut it = st.objects.range((start, end));
    let mut items = Vec::new();
    let passes = |o: &CachedObject| filter.is_none_or(|f| f(&o.view));
    let mut continue_token = None;
    let mut remaining_item_count = None;
    for (_, o) in it.by_ref() {
        if limit > 0 && items.len() as i64 >= limit {
            // `o` is the first key past the page: more only if some object still matches.
            let more = passes(o) || it.clone().any(|(_, o)| passes(o));
            if more {
                let last: &Arc<CachedObject> = items.last().expect("limit > 0 items");
                continue_token = Some(encode_continue(&next_key(&last.key), prefix, rev)?);
                if filter.is_none() {
                    remaining_item_count = Some(1 + it.count() as i64);
                }
            }
            break;
        }
        if passes(o) {
            items.push(o.clone());
        }
    }
    Ok(CachedList {
        items,
        resource_version: rev,
        continue_token,
        remaining_item_count,
    })
}

/// The cache task: LIST, then apply the store watch; on any failure, LIST again.
async fn run(s: Arc<Shared>, rev_tx: watch::Sender<i64>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match init(&s).await {
            Ok(rev) => {
                let _ = rev_tx.send(rev);
                backoff = Duration::from_millis(100);
                match follow(&s, &rev_tx, rev).await {
                    Ok(()) => debug!(prefix = s.prefix, "watch cache: store watch ended"),
                    Err(e) => {
                        warn!(prefix = s.prefix, error = %e, "watch cache: store watch failed, re-listing")
                    }
                }
            }
            Err(e) => {
                warn!(prefix = s.prefix, error = %e, "watch cache: initial list failed");
            }
        }
        let _ = rev_tx.send(0);
        if let Ok(mut st) = s.state.write() {
            st.ready = false;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Decodes one stored value into a cached object.
fn cached(s: &Shared, key: &[u8], data: &[u8], rev: i64) -> Result<CachedObject, StorageError> {
    let plain = s.store.open(key, data)?.0;
    let v = crate::codec::decode(key, &plain, rev)?;
    // The stored bytes with the resourceVersion spliced in: one decode (for the selectable
    // view) and no encode per event.
    let json = match crate::codec::splice_resource_version(&plain, rev) {
        Some(j) => j,
        None => serde_json::to_vec(&v).map_err(|e| StorageError::Internal(e.to_string()))?,
    };
    Ok(CachedObject {
        key: String::from_utf8_lossy(key).into_owned(),
        rev,
        json: Bytes::from(json),
        view: (s.view)(&v),
        tree: OnceLock::new(),
    })
}

/// LISTs the prefix (linearizable) into a fresh state; returns its revision.
async fn init(s: &Shared) -> Result<i64, StorageError> {
    let mut kv = s
        .store
        .client
        .kv_client()
        .max_decoding_message_size(i32::MAX as usize);
    let opts = GetOptions::new().with_range(prefix_end(s.prefix.as_bytes()));
    let resp = s
        .store
        .timed(kv.get(s.prefix.as_str(), Some(opts)))
        .await?
        .map_err(|e| etcd_error(e, "unexpected compaction"))?;
    let rev = resp
        .header()
        .map(|h| h.revision())
        .ok_or_else(|| StorageError::Internal("range response without a header".into()))?;
    let mut objects = BTreeMap::new();
    for kv in resp.kvs() {
        let o = cached(s, kv.key(), kv.value(), kv.mod_revision())?;
        objects.insert(o.key.clone(), Arc::new(o));
    }
    let mut st = s.state.write().map_err(poisoned)?;
    st.generation += 1;
    st.objects = objects;
    st.ring.clear();
    st.oldest = rev;
    st.rev = rev;
    st.last_change = rev;
    st.ready = true;
    debug!(
        prefix = s.prefix,
        rev,
        n = st.objects.len(),
        "watch cache listed"
    );
    Ok(rev)
}

/// Applies the store watch from `rev + 1` until it fails.
async fn follow(s: &Shared, rev_tx: &watch::Sender<i64>, rev: i64) -> Result<(), StorageError> {
    let opts = WatchOptions::new()
        .with_start_revision(rev + 1)
        .with_prefix()
        .with_progress_notify();
    let mut client = s.store.client.watch_client();
    let stream = s
        .store
        .timed(client.watch(s.prefix.as_str(), Some(opts)))
        .await?
        .map_err(|e| etcd_error(e, "too old resource version"))?;
    let (mut requests, mut responses) = stream.split();
    let interval = s.store.config.bookmark_interval;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Requested progress notifications advance the cache's revision; from a store that may send
    // one ahead of pending events (etcd-io/etcd#15220) that revision would be a lie, so there
    // only events and the store's own periodic notifications (sent to synced watchers) move it.
    let request_progress = s.store.progress_is_ordered().await;
    loop {
        tokio::select! {
            _ = ticker.tick(), if request_progress => {
                requests.request_progress().await.map_err(|e| etcd_error(e, "progress"))?;
            }
            _ = s.progress.notified(), if request_progress => {
                requests.request_progress().await.map_err(|e| etcd_error(e, "progress"))?;
            }
            msg = responses.message() => {
                let Some(resp) = msg.map_err(|e| etcd_error(e, "too old resource version"))? else {
                    return Ok(());
                };
                if resp.compact_revision() != 0 {
                    return Err(StorageError::Expired {
                        message: format!("store watch compacted at {}", resp.compact_revision()),
                        continue_token: None,
                    });
                }
                if resp.canceled() {
                    return Err(StorageError::Internal(format!(
                        "store watch canceled: {}",
                        resp.cancel_reason()
                    )));
                }
                if resp.events().is_empty() {
                    if resp.created() {
                        continue;
                    }
                    // A progress notification: everything up to the header revision is here.
                    let hrev = resp.header().map(|h| h.revision()).unwrap_or(0);
                    let mut st = s.state.write().map_err(poisoned)?;
                    if hrev > st.rev {
                        st.rev = hrev;
                        drop(st);
                        let _ = rev_tx.send(hrev);
                    }
                    continue;
                }
                // Decode outside the lock; apply under it.
                let mut decoded = Vec::with_capacity(resp.events().len());
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let rev = kv.mod_revision();
                    match ev.event_type() {
                        EtcdEventType::Put => {
                            decoded.push((rev, Some(Arc::new(cached(s, kv.key(), kv.value(), rev)?)), String::new()));
                        }
                        EtcdEventType::Delete => {
                            decoded.push((rev, None, String::from_utf8_lossy(kv.key()).into_owned()));
                        }
                    }
                }
                let at = Instant::now();
                let mut st = s.state.write().map_err(poisoned)?;
                let mut top = st.rev;
                for (rev, obj, del_key) in decoded {
                    top = top.max(rev);
                    let seq = st.next_seq;
                    let ev = match obj {
                        Some(obj) => {
                            let prev = st.objects.insert(obj.key.clone(), obj.clone());
                            Event {
                                seq,
                                rev,
                                at,
                                ty: if prev.is_some() { EventType::Modified } else { EventType::Added },
                                obj,
                                prev,
                                frame: OnceLock::new(),
                                prev_at_rev: OnceLock::new(),
                            }
                        }
                        None => {
                            let Some(prev) = st.objects.remove(&del_key) else { continue };
                            let obj = Arc::new(prev.at_rev(rev)?);
                            Event {
                                seq,
                                rev,
                                at,
                                ty: EventType::Deleted,
                                obj,
                                prev: None,
                                frame: OnceLock::new(),
                                prev_at_rev: OnceLock::new(),
                            }
                        }
                    };
                    st.next_seq += 1;
                    st.last_change = rev;
                    let cap = s.capacity;
                    st.push(cap, ev);
                }
                st.rev = top;
                drop(st);
                let _ = rev_tx.send(top);
            }
        }
    }
}

/// The watch caches of a server, one per resource prefix, started on first use.
pub struct WatchCaches {
    store: Storage,
    capacity: usize,
    map: Mutex<HashMap<String, WatchCache>>,
}

impl std::fmt::Debug for WatchCaches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchCaches")
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl WatchCaches {
    pub fn new(store: Storage, capacity: usize) -> Self {
        WatchCaches {
            store,
            capacity,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The cache of `prefix`, started (with `view`) if it is not running yet.
    pub fn get(
        &self,
        prefix: &str,
        view: impl FnOnce() -> ViewFn,
    ) -> Result<WatchCache, StorageError> {
        let mut map = self.map.lock().map_err(poisoned)?;
        if let Some(c) = map.get(prefix) {
            return Ok(c.clone());
        }
        let c = WatchCache::start(&self.store, prefix, view(), self.capacity)?;
        map.insert(prefix.to_string(), c.clone());
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(st: &State, at: Instant) -> Event {
        let rev = st.next_seq as i64 + 1;
        Event {
            seq: st.next_seq,
            rev,
            at,
            ty: EventType::Added,
            obj: Arc::new(CachedObject {
                key: format!("/k/{rev}"),
                rev,
                json: Bytes::from_static(b"{}"),
                view: Value::Null,
                tree: OnceLock::new(),
            }),
            prev: None,
            frame: OnceLock::new(),
            prev_at_rev: OnceLock::new(),
        }
    }

    fn push_n(st: &mut State, bounds: (usize, usize), n: usize, at: Instant) {
        for _ in 0..n {
            let ev = event(st, at);
            st.next_seq += 1;
            st.push(bounds, ev);
        }
    }

    #[test]
    fn ring_grows_while_its_history_is_fresh_and_shrinks_when_stale() {
        let t0 = Instant::now();
        let mut st = State::default();
        let bounds = (4, 32);
        // A burst: every event is fresh, so the ring doubles instead of evicting, up to 32.
        push_n(&mut st, bounds, 20, t0);
        assert_eq!(st.ring.len(), 20);
        assert_eq!(st.cap, 32);
        assert_eq!(st.oldest, 0, "nothing evicted while fresh");
        push_n(&mut st, bounds, 20, t0);
        assert_eq!(st.ring.len(), 32, "bounded by the upper capacity");
        assert_eq!(st.oldest, 8);
        // Then a trickle, one event every 100 s: the newest quarter is stale, so the ring
        // halves per event down to the lower bound.
        for k in 1..=3u32 {
            push_n(&mut st, bounds, 1, t0 + Duration::from_secs(100) * k);
        }
        assert_eq!(st.cap, 4);
        assert_eq!(st.ring.len(), 4);
        assert_eq!(st.ring.back().map(|e| e.rev), Some(43));
        assert_eq!(st.oldest, 39, "the ring holds every event after `oldest`");
        // A burst again: once the stale events are out, the ring grows back.
        push_n(&mut st, bounds, 10, t0 + Duration::from_secs(300));
        assert_eq!(st.cap, 16);
        assert_eq!(st.ring.len(), 11);
        assert_eq!(st.oldest, 42);
    }

    #[test]
    fn fixed_bounds_evict_in_order() {
        let mut st = State::default();
        push_n(&mut st, (3, 3), 5, Instant::now());
        let revs: Vec<i64> = st.ring.iter().map(|e| e.rev).collect();
        assert_eq!(revs, [3, 4, 5]);
        assert_eq!(st.oldest, 2);
        assert_eq!(st.seq_after(3), 3);
    }
}
