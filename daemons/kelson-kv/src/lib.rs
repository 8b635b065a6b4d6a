//! kelson-kv: the bundled Raft key-value store that speaks the etcd v3 API.
//!
//! The pieces, each in its own crate or module:
//! - consensus: `kelson-raft` (raft-rs Ready loop, RocksDB log, gRPC peer transport);
//! - keyspace: `kelson-mvcc` (etcd's MVCC as a deterministic state machine over RocksDB);
//! - watch: `kelson-watch` (watcher hub and the Watch service);
//! - here: the glue ([`store`]), the other etcd services ([`kv_service`], [`lease`],
//!   [`cluster_service`], [`maintenance`]), configuration ([`config`]), the daemon lifecycle
//!   ([`server`]), D-Bus ([`dbus`]) and snapshot restore ([`restore`]).
//!
//! Request flow: a write arrives on the etcd gRPC API → is wrapped in an `InternalRequest` →
//! proposed to Raft → replicated and fsynced on a quorum → applied on every member to the MVCC
//! inside the same RocksDB write batch as the applied index → made visible and fed to watchers →
//! the proposer answers the client. A linearizable read waits for a ReadIndex round and then reads
//! the local MVCC.

pub mod authority;
pub mod cluster_service;
pub mod config;
pub mod dbus;
pub mod errors;
pub mod kv_service;
pub mod leader;
pub mod lease;
pub mod maintenance;
pub mod metrics;
pub mod restore;
pub mod server;
pub mod store;

pub use config::{KvConfig, KvFlags};
