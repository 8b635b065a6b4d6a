//! The two views of the store the watch layer needs, as traits.
//!
//! `kelson-watch` does not depend on the MVCC crate: the daemon implements [`EventSource`] over
//! its store and [`HeaderSource`] over its raft node, so this crate can be built and tested
//! against an in-memory fake.

use kelson_etcdpb::etcdserverpb::ResponseHeader;
use kelson_etcdpb::mvccpb::Event;

/// Why [`EventSource::events`] could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchSourceError {
    /// The requested history is gone; the watcher is canceled with this compact revision.
    #[error("mvcc: required revision has been compacted (compact revision {compact_revision})")]
    Compacted {
        /// The store's compact revision: the oldest revision a new watch may start after.
        compact_revision: i64,
    },
    /// The store could not be read (I/O error, shutting down). The watch stream is ended with
    /// `UNAVAILABLE` so the client reconnects and resumes from its last revision.
    #[error("event source unavailable: {0}")]
    Unavailable(String),
}

/// What the hub needs from the MVCC store (implemented by the daemon over kelson-mvcc).
pub trait EventSource: Send + Sync + 'static {
    /// All events with `from_rev <= mod_revision <= to_rev`, oldest first (by revision, then by
    /// position inside the revision), with `prev_kv` filled when a previous version exists.
    ///
    /// Batching contract, which the hub relies on to never skip an event:
    /// - a result with fewer than `limit` events is complete up to `to_rev`;
    /// - otherwise it is complete up to the `mod_revision` of its last event, and it never splits
    ///   a revision (it may return more than `limit` events to finish the last revision).
    ///
    /// Returns `Err(WatchSourceError::Compacted { compact_revision })` if
    /// `from_rev < compact revision` (etcd refuses only revisions below it).
    ///
    /// Called synchronously from a watch stream's task when a watcher catches up, so one call
    /// should stay short (the hub asks for `HubConfig::catchup_batch` events at a time).
    fn events(
        &self,
        from_rev: i64,
        to_rev: i64,
        limit: usize,
    ) -> Result<Vec<Event>, WatchSourceError>;
    /// The newest committed revision visible to readers.
    fn current_revision(&self) -> i64;
    /// The revision of the last compaction (0 if never compacted).
    fn compact_revision(&self) -> i64;
}

/// Fills the response header (cluster_id, member_id, raft_term) for a given revision.
pub trait HeaderSource: Send + Sync + 'static {
    /// A header carrying `revision` and this member's identity and current raft term.
    fn header(&self, revision: i64) -> ResponseHeader;
}
