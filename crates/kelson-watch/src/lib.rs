//! etcd v3 watch for kelson-kv: the watcher hub and the gRPC `Watch` service.
//!
//! - [`WatchHub`] receives every committed batch from the store ([`WatchHub::publish`]) and
//!   keeps a bounded ring of recent revisions shared by all watchers; watchers that start in the
//!   past or fall behind read from the store through [`EventSource`].
//! - [`WatchService`] implements etcd's bidirectional `Watch` RPC on top of the hub: create
//!   (key ranges, start revision, filters, prev_kv, client-chosen ids, fragment), cancel,
//!   progress requests and periodic progress notifications, with etcd's guarantees — ordered,
//!   unique, reliable, atomic per revision, resumable. Its gRPC server ([`WatchGrpcServer`])
//!   encodes each event once per revision and shares the bytes across watchers (`wire`).
//!
//! The crate sees the store only through [`EventSource`] and [`HeaderSource`], which the daemon
//! implements; it does not depend on the MVCC crate.

mod hub;
mod service;
mod source;
mod stream;
mod watcher;
mod wire;

pub use hub::{HubConfig, WatchHub};
pub use service::{WatchService, DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_STREAM_BUFFER};
pub use source::{EventSource, HeaderSource, WatchSourceError};
pub use stream::{
    ERR_COMPACTED, ERR_DUPLICATE_ID, ERR_GRPC_COMPACTED, ERR_INVALID_ID, INVALID_WATCH_ID,
};
pub use watcher::{KeyRange, ERR_EMPTY_RANGE};
pub use wire::{EncodedWatchResponse, WatchGrpcServer};
