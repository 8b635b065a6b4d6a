//! The watcher hub: the one place committed events enter the watch layer.
//!
//! Design (the "pull" model). The store calls [`WatchHub::publish`] after every durable batch.
//! `publish` appends the batch, shared behind an `Arc`, to a bounded in-memory ring of recent
//! revisions and bumps a `tokio::sync::watch` revision signal; it does no per-watcher work, so
//! the raft loop that calls it never waits on a watcher. Each watch stream owns a task that wakes
//! on the signal and *pulls*: for every watcher it reads the events after that watcher's next
//! revision, either from the ring (the watcher is "synced": everything it has not seen is still
//! in memory, shared by all watchers, so 1000 watchers cost one copy of the batch) or, when the
//! watcher starts in the past or fell behind the ring because its client was slow, from
//! [`EventSource::events`] in bounded batches ("unsynced" catch-up). Since a watcher is just a
//! next-revision cursor, moving between the two states cannot produce a gap or a duplicate:
//! both paths return exactly the events with `mod_revision >= next_rev`, and the cursor moves
//! past whatever was read.
//!
//! The ring covers the revision interval `(base, current]`: evicting the oldest batch moves
//! `base` up to that batch's last revision. A read with `next_rev > base` is served from memory.
//!
//! `prev_kv` is optional in published batches. Reading a key's previous value costs the store a
//! RocksDB lookup per put, and it is only needed by watchers created with `prev_kv`, so the hub
//! counts those ([`WatchHub::wants_prev_kv`]) and the store fills `prev_kv` only while there are
//! any ([`WatchHub::publish_batch`] says whether it did). A `prev_kv` watcher that meets a batch
//! published without them (it was created while that batch was being applied) reads those
//! revisions from the store instead, which always fills `prev_kv`; so no watcher ever gets an
//! event with a missing `prev_kv`, whatever the interleaving.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use kelson_etcdpb::mvccpb::Event;
use parking_lot::RwLock;
use tokio::sync::watch;

use crate::source::{EventSource, WatchSourceError};
use crate::watcher::Watcher;
use crate::wire::EventField;

/// Tuning of the hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Events kept in memory for synced watchers (the newest batch is kept whatever its size).
    /// A watcher whose client lags further behind catches up from the store instead.
    pub ring_events: usize,
    /// Events read from the store per catch-up call (see the batching contract of
    /// [`EventSource::events`]); bounds the memory one lagging watcher can pin.
    pub catchup_batch: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            ring_events: 16 * 1024,
            catchup_batch: 1000,
        }
    }
}

/// One `publish` call: the events of the revisions `(after_rev, to_rev]`.
#[derive(Debug)]
struct Batch {
    to_rev: i64,
    events: Arc<SharedBatch>,
    /// Every event that has a previous version carries it in `prev_kv`.
    prev_kv_complete: bool,
}

/// Counts one live `prev_kv` watcher for [`WatchHub::wants_prev_kv`] until dropped.
#[derive(Debug)]
pub(crate) struct PrevKvGuard(Arc<AtomicUsize>);

impl Drop for PrevKvGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A published batch as all watchers share it: the events, and each event's wire encoding
/// (see `wire`), made by the first watcher that needs it, once per `prev_kv` variant, so a
/// thousand watchers of one key cost one encoding instead of a thousand clones and encodings.
#[derive(Debug)]
pub(crate) struct SharedBatch {
    events: Vec<Event>,
    plain: OnceLock<Vec<Bytes>>,
    with_prev_kv: OnceLock<Vec<Bytes>>,
}

impl SharedBatch {
    fn new(events: Vec<Event>) -> Self {
        SharedBatch {
            events,
            plain: OnceLock::new(),
            with_prev_kv: OnceLock::new(),
        }
    }

    /// Encoded `events` fields, index-aligned with `events`.
    fn encoded(&self, prev_kv: bool) -> &[Bytes] {
        let (cell, keep_prev) = if prev_kv {
            (&self.with_prev_kv, true)
        } else {
            (&self.plain, false)
        };
        cell.get_or_init(|| {
            self.events
                .iter()
                .map(|e| {
                    if keep_prev || e.prev_kv.is_none() {
                        EventField::encode(e).bytes
                    } else {
                        let stripped = Event {
                            r#type: e.r#type,
                            kv: e.kv.clone(),
                            prev_kv: None,
                        };
                        EventField::encode(&stripped).bytes
                    }
                })
                .collect()
        })
    }
}

#[derive(Debug)]
struct Ring {
    batches: VecDeque<Batch>,
    events: usize,
    /// Every event with `mod_revision > base` (and `<= current`) is in `batches`.
    base: i64,
    current: i64,
}

/// Events read for one watcher: all events with `from <= mod_revision <= upto`.
#[derive(Debug)]
pub(crate) struct Chunk {
    pub(crate) from: i64,
    pub(crate) upto: i64,
    /// Whether the chunk was served from the store rather than the ring (for tests/metrics).
    pub(crate) from_store: bool,
    data: ChunkData,
}

#[derive(Debug)]
enum ChunkData {
    Ring(Vec<Arc<SharedBatch>>),
    Store(Vec<Event>),
}

impl Chunk {
    /// The chunk's events in revision order, restricted to `[from, upto]` (a ring batch may hold
    /// revisions the watcher has already seen when it joined in the middle of it).
    pub(crate) fn events(&self) -> impl Iterator<Item = &Event> + '_ {
        let (from, upto) = (self.from, self.upto);
        let all: Box<dyn Iterator<Item = &Event> + '_> = match &self.data {
            ChunkData::Ring(batches) => Box::new(batches.iter().flat_map(|b| b.events.iter())),
            ChunkData::Store(events) => Box::new(events.iter()),
        };
        all.filter(move |e| {
            let rev = e.kv.as_ref().map_or(0, |kv| kv.mod_revision);
            rev >= from && rev <= upto
        })
    }

    /// What watcher `w` gets of this chunk, encoded: shared encodings for ring batches, fresh
    /// ones for a store catch-up (which only that watcher reads).
    pub(crate) fn fields(&self, w: &Watcher) -> Vec<EventField> {
        let (from, upto) = (self.from, self.upto);
        let rev_of = |e: &Event| e.kv.as_ref().map_or(0, |kv| kv.mod_revision);
        match &self.data {
            ChunkData::Ring(batches) => {
                let mut out = Vec::new();
                for b in batches {
                    let mut encoded = None;
                    for (i, e) in b.events.iter().enumerate() {
                        let rev = rev_of(e);
                        if rev < from || rev > upto || !w.accepts(e) {
                            continue;
                        }
                        let enc = *encoded.get_or_insert_with(|| b.encoded(w.prev_kv));
                        out.push(EventField {
                            rev,
                            bytes: enc[i].clone(),
                        });
                    }
                }
                out
            }
            ChunkData::Store(_) => self
                .events()
                .filter_map(|e| w.project(e))
                .map(|e| EventField::encode(&e))
                .collect(),
        }
    }
}

/// Fan-out point between the store and every watch stream. See the module docs.
pub struct WatchHub {
    source: Arc<dyn EventSource>,
    config: HubConfig,
    ring: RwLock<Ring>,
    signal: watch::Sender<i64>,
    prev_kv_watchers: Arc<AtomicUsize>,
}

impl std::fmt::Debug for WatchHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ring = self.ring.read();
        f.debug_struct("WatchHub")
            .field("current", &ring.current)
            .field("ring_base", &ring.base)
            .field("ring_events", &ring.events)
            .finish()
    }
}

impl WatchHub {
    /// A hub over `source` with default tuning, starting at the source's current revision.
    /// Create it once the store has recovered (or call [`WatchHub::reset`] afterwards), and
    /// publish every batch committed after that point.
    pub fn new(source: Arc<dyn EventSource>) -> Arc<WatchHub> {
        Self::with_config(source, HubConfig::default())
    }

    /// A hub with explicit tuning.
    pub fn with_config(source: Arc<dyn EventSource>, config: HubConfig) -> Arc<WatchHub> {
        let current = source.current_revision();
        let (signal, _) = watch::channel(current);
        Arc::new(WatchHub {
            source,
            config: HubConfig {
                ring_events: config.ring_events.max(1),
                catchup_batch: config.catchup_batch.max(1),
            },
            ring: RwLock::new(Ring {
                batches: VecDeque::new(),
                events: 0,
                base: current,
                current,
            }),
            signal,
            prev_kv_watchers: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// True while some watcher wants `prev_kv`: the store must then fill it in the events it
    /// publishes (or publish with `prev_kv_complete = false`).
    pub fn wants_prev_kv(&self) -> bool {
        self.prev_kv_watchers.load(Ordering::SeqCst) > 0
    }

    /// Registers a `prev_kv` watcher (before it reads anything) for as long as the guard lives.
    pub(crate) fn prev_kv_guard(&self) -> PrevKvGuard {
        self.prev_kv_watchers.fetch_add(1, Ordering::SeqCst);
        PrevKvGuard(Arc::clone(&self.prev_kv_watchers))
    }

    /// Called by the store after each durable batch, with every event of the newly visible
    /// revisions in order (prev_kv filled) and the new current revision. Cheap: an append to the
    /// ring under a short write lock and a wake-up of the stream tasks.
    pub fn publish(&self, events: Arc<Vec<Event>>, revision: i64) {
        self.publish_batch(events, revision, true)
    }

    /// [`WatchHub::publish`] for a store that may have left `prev_kv` out: `prev_kv_complete`
    /// says whether every event with a previous version carries it. `prev_kv` watchers read
    /// incomplete batches from the store (see the module docs).
    pub fn publish_batch(&self, events: Arc<Vec<Event>>, revision: i64, prev_kv_complete: bool) {
        {
            let mut ring = self.ring.write();
            if revision <= ring.current {
                if !events.is_empty() {
                    tracing::warn!(
                        revision,
                        current = ring.current,
                        "watch hub: ignoring publish of an old revision"
                    );
                }
                return;
            }
            ring.events += events.len();
            // The store hands over its only reference in practice: no copy then.
            let events = Arc::try_unwrap(events).unwrap_or_else(|shared| (*shared).clone());
            ring.batches.push_back(Batch {
                to_rev: revision,
                events: Arc::new(SharedBatch::new(events)),
                prev_kv_complete,
            });
            ring.current = revision;
            while ring.events > self.config.ring_events && ring.batches.len() > 1 {
                if let Some(old) = ring.batches.pop_front() {
                    ring.events -= old.events.events.len();
                    ring.base = old.to_rev;
                }
            }
        }
        self.signal.send_replace(revision);
    }

    /// Forgets the in-memory history and jumps to `revision`, e.g. after the store installed a
    /// raft snapshot: every watcher behind `revision` then catches up from the store, which is
    /// the only source that knows what the snapshot contained.
    pub fn reset(&self, revision: i64) {
        {
            let mut ring = self.ring.write();
            ring.batches.clear();
            ring.events = 0;
            ring.base = revision;
            ring.current = revision;
        }
        self.signal.send_replace(revision);
    }

    /// The newest revision published (what a watch with start_revision 0 starts after).
    pub fn current_revision(&self) -> i64 {
        self.ring.read().current
    }

    /// The store's compact revision.
    pub fn compact_revision(&self) -> i64 {
        self.source.compact_revision()
    }

    /// The tuning in effect.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// A receiver that is marked changed on every publish.
    pub(crate) fn subscribe(&self) -> watch::Receiver<i64> {
        self.signal.subscribe()
    }

    /// Reads the events a watcher with cursor `from` has not seen, up to the current revision:
    /// from the ring when it still covers `from`, otherwise one batch from the store.
    /// Returns `None` when there is nothing new (`from > current`). A reader that wants
    /// `prev_kv` is sent to the store for revisions whose batch was published without them.
    pub(crate) fn read(&self, from: i64, prev_kv: bool) -> Result<Option<Chunk>, WatchSourceError> {
        let current = {
            let ring = self.ring.read();
            if from > ring.current {
                return Ok(None);
            }
            // Batches are in revision order: skip those that end before `from`.
            let start = ring.batches.partition_point(|b| b.to_rev < from);
            let usable = !prev_kv || ring.batches.range(start..).all(|b| b.prev_kv_complete);
            if from > ring.base && usable {
                let batches = ring
                    .batches
                    .range(start..)
                    .map(|b| Arc::clone(&b.events))
                    .collect();
                return Ok(Some(Chunk {
                    from,
                    upto: ring.current,
                    from_store: false,
                    data: ChunkData::Ring(batches),
                }));
            }
            ring.current
        };
        // The store read happens without the ring lock so publish never waits on disk.
        let limit = self.config.catchup_batch;
        let events = self.source.events(from, current, limit)?;
        let upto = if events.len() < limit {
            current
        } else {
            let last = events
                .last()
                .and_then(|e| e.kv.as_ref())
                .map_or(0, |kv| kv.mod_revision);
            if last < from {
                // A source breaking its contract must not make the caller spin forever.
                return Err(WatchSourceError::Unavailable(format!(
                    "event source returned {} events ending at revision {last}, before {from}",
                    events.len()
                )));
            }
            last.min(current)
        };
        Ok(Some(Chunk {
            from,
            upto,
            from_store: true,
            data: ChunkData::Store(events),
        }))
    }
}
