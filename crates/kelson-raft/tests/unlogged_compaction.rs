//! Log compaction with unlogged applied state (what kelson-kv runs): the applied state reaches
//! disk only through RocksDB flushes, so the log may be compacted only up to an applied index
//! that a flush has made durable (`Loop::maybe_snapshot` flushes the applied state's column
//! families, waiting, before it compacts). This checks that the log is compacted and stays
//! bounded under a stream of writes, and that a crash image of the data dir — its files
//! without the memtables, as after `kill -9` — recovers every write: it fails if compaction
//! ever passes what a flush made durable. (`kill -9` of the daemon mid-load is
//! `daemons/kelson-kv/tests/durability.rs`.)
//!
//! Why the flush is waited for on the Raft thread, although it stalls every write meanwhile:
//! RocksDB 7.8 has no atomic manual flush of several column families (`Flush(cf)` with
//! `atomic_flush` covers that one family), so the families are flushed one by one, the one
//! holding the applied index last; started without waiting (tried in session 7), the flushes
//! finish in any order, and a crash between them left the applied index ahead of or behind
//! the state it describes (`durability.rs` failed 2 runs in 12).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use kelson_raft::RaftNode;
use rocksdb::{Options, DB};

const SNAPSHOT_COUNT: u64 = 50;
const WRITES: usize = 1500;

/// A database opened like kelson-kv opens its own: atomic flush, so the applied state and its
/// index are always persisted together.
fn open_atomic(dir: &std::path::Path) -> Arc<DB> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_atomic_flush(true);
    // No compactions: the crash image below is copied file by file while the database is open,
    // so nothing may rewrite files meanwhile (flushes are waited out before copying).
    opts.set_disable_auto_compactions(true);
    let mut cfs: Vec<&str> = kelson_raft::CFS.to_vec();
    cfs.push(SM_CF);
    Arc::new(DB::open_cf(&opts, dir.join("db"), &cfs).expect("open the test database"))
}

/// Entries left in the raft log column family (compaction deletes a range of them).
fn log_entries(db: &DB) -> usize {
    let cf = db
        .cf_handle(kelson_raft::CFS[0])
        .expect("raft log column family");
    db.iterator_cf(cf, rocksdb::IteratorMode::Start).count()
}

async fn start(
    dir: &tempfile::TempDir,
    cfg: &kelson_raft::RaftConfig,
) -> (RaftNode, SmView, Arc<DB>) {
    let db = open_atomic(dir.path());
    let (sm, view) = TestSm::open(db.clone());
    let node = RaftNode::start(db.clone(), cfg.clone(), sm)
        .await
        .expect("start the member");
    assert!(
        wait_leader(&[&node], Duration::from_secs(3))
            .await
            .is_some(),
        "a lone member leads within 3 s"
    );
    (node, view, db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_is_compacted_only_behind_flushed_applied_state() {
    init_tracing();
    let (mut cfg, dir) = solo();
    cfg.snapshot_count = SNAPSHOT_COUNT;
    cfg.unlogged_apply_cfs = vec![SM_CF.to_string()];
    let (node, view, db) = start(&dir, &cfg).await;

    // 16 concurrent writers, so compaction points pass while batches are in flight.
    let mut tasks = Vec::new();
    for w in 0..16 {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..WRITES).step_by(16) {
                node.propose(format!("k{i:05}=v{i}").into_bytes())
                    .await
                    .expect("a write is applied");
            }
        }));
    }
    let mut max_seen = 0;
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("writers finish within 60 s")
            .expect("writer task");
        max_seen = max_seen.max(log_entries(&db));
    }
    assert_eq!(view.len(), WRITES, "every write is applied");

    // Compaction keeps up: the log holds at most one compaction point's worth of entries (a
    // point comes up to 16 entries late: one Ready of 16 writers) plus the tail kept for
    // followers — far below the writes made.
    let bound = 2 * (SNAPSHOT_COUNT as usize + 16);
    let left = log_entries(&db);
    assert!(
        left <= bound && max_seen <= bound,
        "log not compacted: {left} entries now, {max_seen} at most, after {WRITES} writes (bound {bound})"
    );
    assert!(left > 0, "the tail after the last compaction point stays");

    // A crash: what is on disk now, without the memtables (unlogged applied state that no
    // flush has persisted yet is lost, as in `kill -9`). Recovery must rebuild every write from
    // the flushed state plus the log after it — which fails if compaction ever went past what
    // a finished flush made durable.
    node.shutdown().await;
    drop(node);
    assert!(
        wait_until(Duration::from_secs(10), || flushes_idle(&db)).await,
        "started flushes finish within 10 s"
    );
    let crashed = tempfile::tempdir().expect("temp dir");
    copy_dir(&dir.path().join("db"), &crashed.path().join("db"));
    drop(db);
    let mut cfg2 = cfg.clone();
    cfg2.data_dir = crashed.path().to_path_buf();
    let (node, view, _db) = start(&crashed, &cfg2).await;
    assert_eq!(view.len(), WRITES, "every write survives the crash");
    assert_eq!(view.get("k01499").as_deref(), Some("v1499"));
    node.shutdown().await;
}

/// No flush running and no immutable memtable waiting: the files on disk are not changing
/// (compactions are off), while the active memtables stay in memory only.
fn flushes_idle(db: &DB) -> bool {
    let running = db.property_int_value("rocksdb.num-running-flushes");
    let imm = |name: &str| {
        let cf = db.cf_handle(name).expect("column family");
        db.property_int_value_cf(cf, "rocksdb.num-immutable-mem-table")
    };
    matches!(running, Ok(Some(0)))
        && kelson_raft::CFS
            .iter()
            .chain([SM_CF].iter())
            .all(|n| matches!(imm(n), Ok(Some(0))))
}

/// Copies a RocksDB directory (flat: SST, WAL, MANIFEST, OPTIONS, ...) file by file.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("create the copy");
    for e in std::fs::read_dir(from).expect("read the database dir") {
        let e = e.expect("dir entry");
        if e.file_type().expect("file type").is_file() {
            match std::fs::copy(e.path(), to.join(e.file_name())) {
                Ok(_) => {}
                // RocksDB purges obsolete files (a WAL whose data a flush persisted, old
                // OPTIONS/LOG files) in the background; one gone meanwhile was not needed.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => panic!("copying {}: {err}", e.path().display()),
            }
        }
    }
}
