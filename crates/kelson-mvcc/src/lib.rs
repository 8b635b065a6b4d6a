//! kelson-mvcc: etcd v3's MVCC keyspace as a deterministic state machine over RocksDB.
//!
//! The kv daemon feeds committed Raft entries ([`InternalRequest`]) to [`Mvcc::apply`], which
//! writes into the caller's `WriteBatch` (committed together with the Raft applied index), and
//! calls [`Mvcc::publish`] once that batch is durable; reads ([`Mvcc::range`],
//! [`Mvcc::txn_read_only`], [`Mvcc::events`], [`Mvcc::hash_kv`]) only ever see published
//! revisions. Semantics follow etcd 3.4/3.5 as `etcdctl` and `etcd-client` observe them:
//! revisions `(main, sub)`, per-key create/mod revision and version, tombstones, compaction,
//! leases (grant/revoke; the TTL clock lives in the daemon), alarms, and etcd's error strings.
//!
//! Storage layout (column families in [`CFS`]):
//! - `kv`: `main(8, BE) '_' sub(8, BE) ['t']` -> prost `mvccpb::KeyValue` (tombstone: key and
//!   mod_revision only). Revision order = key order, so watch catch-up is a forward scan.
//! - `mvcc_meta`: current revision, compact revision, alarms.
//! - `lease`: lease id (8, BE) -> granted TTL (8, BE). Attached keys are derived from the values.
//!
//! Modules: [`revision`] (key encoding), [`index`] (the compact in-memory key index), `txn`
//! (request validation and compares), `snapshot` (the blob format, in memory or streamed), `store` (everything else; its child
//! `store::restore` writes and restores snapshots as streams).
//!
//! [`InternalRequest`]: kelson_etcdpb::internal::InternalRequest

mod error;
pub mod index;
pub mod revision;
mod snapshot;
mod store;
mod txn;

pub use error::{code, MvccError};
pub use store::{Applied, Mvcc, PreparedRestore, SnapshotView};
pub use txn::KeyRange;

/// The RocksDB column families this crate owns; open the DB with all of them.
pub const CFS: &[&str] = &["kv", "mvcc_meta", "lease"];
