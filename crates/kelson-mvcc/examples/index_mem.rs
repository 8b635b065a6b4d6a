//! Measures memory per key: the bare key index (built by inserts, as `apply` does, and
//! bulk-loaded, as `open` does) and a whole store reopened over N keys (RocksDB included). Each
//! measurement runs in a fresh child process so freed memory from one cannot hide another.
//! Run: `cargo run --release -p kelson-mvcc --example index_mem [N]` (default 200000). A program
//! that prints a table, not a timed test: RSS depends on the allocator and RocksDB settings.

use std::collections::BTreeMap;
use std::sync::Arc;

use kelson_etcdpb::etcdserverpb::PutRequest;
use kelson_etcdpb::internal::{internal_request::Request, InternalRequest};
use kelson_mvcc::index::KeyIndex;
use kelson_mvcc::revision::Rev;
use kelson_mvcc::{Mvcc, CFS};

type Res = Result<(), Box<dyn std::error::Error>>;

/// Resident set size in bytes, from /proc (Linux).
fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Kubernetes-like key names, ~41 bytes.
fn key(i: usize) -> Vec<u8> {
    format!("/registry/pods/namespace-{:03}/pod-{:08}", i % 100, i).into_bytes()
}

fn report(what: &str, n: usize, bytes: u64) {
    println!(
        "{what:<44} {:>9.1} {:>10}",
        bytes as f64 / 1e6,
        bytes / n as u64
    );
}

fn index_inserts(n: usize) -> Res {
    let before = rss();
    let mut index: BTreeMap<Box<[u8]>, KeyIndex> = BTreeMap::new();
    for i in 0..n {
        index.insert(
            key(i).into_boxed_slice(),
            KeyIndex::new(Rev::new(i as i64 + 2, 0)),
        );
    }
    report("index built by inserts", n, rss().saturating_sub(before));
    std::hint::black_box(&index);
    Ok(())
}

fn index_bulk(n: usize) -> Res {
    let before = rss();
    let index: BTreeMap<Box<[u8]>, KeyIndex> = (0..n)
        .map(|i| {
            (
                key(i).into_boxed_slice(),
                KeyIndex::new(Rev::new(i as i64 + 2, 0)),
            )
        })
        .collect();
    report(
        "index bulk-loaded (as after open)",
        n,
        rss().saturating_sub(before),
    );
    std::hint::black_box(&index);
    Ok(())
}

fn store(n: usize) -> Res {
    let dir = tempfile::tempdir()?;
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    {
        let db = Arc::new(rocksdb::DB::open_cf(&opts, dir.path(), CFS)?);
        let mut m = Mvcc::open(db.clone())?;
        for start in (0..n).step_by(1000) {
            let mut wb = rocksdb::WriteBatch::default();
            for i in start..(start + 1000).min(n) {
                let req = InternalRequest {
                    id: i as u64,
                    request: Some(Request::Put(PutRequest {
                        key: key(i),
                        value: vec![b'x'; 100],
                        ..Default::default()
                    })),
                };
                m.apply(&req, &mut wb);
            }
            db.write(wb)?;
            m.publish();
        }
        db.flush_cf(&db.cf_handle("kv").ok_or("no kv cf")?)?;
    }
    // Measure a fresh process reopening the DB: index rebuilt by the scan.
    let exe = std::env::current_exe()?;
    let out = std::process::Command::new(exe)
        .args(["reopen", &n.to_string(), &dir.path().to_string_lossy()])
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    Ok(())
}

fn reopen(n: usize, path: &str) -> Res {
    let before = rss();
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(false);
    let db = Arc::new(rocksdb::DB::open_cf(&opts, path, CFS)?);
    let m = Mvcc::open(db)?;
    assert_eq!(m.key_count(), n);
    report(
        "whole store reopened (incl. rocksdb)",
        n,
        rss().saturating_sub(before),
    );
    println!("{:<44} {:>9.1}", "  process RSS (MB)", rss() as f64 / 1e6);
    Ok(())
}

fn main() -> Res {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("");
    let n_arg = |i: usize| {
        args.get(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(200_000usize)
    };
    match mode {
        "inserts" => return index_inserts(n_arg(2)),
        "bulk" => return index_bulk(n_arg(2)),
        "store" => return store(n_arg(2)),
        "reopen" => return reopen(n_arg(2), args.get(3).ok_or("path")?),
        _ => {}
    }
    let n = n_arg(1);
    println!(
        "keys: {n}, average key length {} bytes",
        (0..n).map(|i| key(i).len()).sum::<usize>() / n
    );
    println!(
        "{:<44} {:>9} {:>10}",
        "measure (RSS delta)", "MB", "bytes/key"
    );
    let exe = std::env::current_exe()?;
    for mode in ["inserts", "bulk", "store"] {
        let out = std::process::Command::new(&exe)
            .args([mode, &n.to_string()])
            .output()?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
        }
    }
    Ok(())
}
