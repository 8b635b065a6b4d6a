//! Helpers shared by kelson-kv's multi-member tests (snapshots, certificate reload):
//! distinct large values without generating every byte, bounded put retries for a loaded
//! machine, waiting for a member to catch up, and a full dump of a member's keyspace to compare
//! members with. Each test binary uses a subset, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod tls;

use std::path::Path;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};
use kelson_testsupport::StoreCluster;

/// A value of `size` bytes: one pseudo-random buffer per size (generated once), stamped with
/// the seed, so values are distinct without generating every byte anew.
pub fn value(seed: u64, size: usize) -> Vec<u8> {
    static BASE: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());
    let mut bases = BASE.lock().expect("value base");
    let base = match bases.iter().find(|b| b.len() == size) {
        Some(b) => b,
        None => {
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
            bases.push(
                (0..size)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect(),
            );
            bases.last().expect("pushed")
        }
    };
    let mut v = base.clone();
    v[..8].copy_from_slice(&seed.to_be_bytes());
    v
}

/// A put retried (bounded) across transient failures: on a loaded machine a 500 ms election
/// timeout can expire and a request can time out; putting the same value again is harmless.
pub async fn put_retry(c: &mut Client, key: String, value: Vec<u8>) {
    let mut last = None;
    for _ in 0..30 {
        match c.put(key.clone(), value.clone(), None).await {
            Ok(_) => return,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("put {key}: {last:?}");
}

/// The pid of the kelson-kv process serving `data_dir` (its command line names it).
pub fn pid_of(data_dir: &Path) -> u32 {
    let want = data_dir.to_string_lossy().to_string();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).to_string())
            .collect();
        if args.first().is_some_and(|a| a.ends_with("kelson-kv")) && args.contains(&want) {
            return pid;
        }
    }
    panic!("no kelson-kv process for {want}");
}

/// Waits (bounded) until member `i` serves revision `rev` from its own state.
pub async fn wait_caught_up(cluster: &StoreCluster, i: usize, rev: i64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        if let Ok(mut c) = cluster.member_client(i).await {
            let opts = GetOptions::new()
                .with_all_keys()
                .with_serializable()
                .with_count_only();
            match c.get("", Some(opts)).await {
                Ok(r) => {
                    let at = r.header().map(|h| h.revision()).unwrap_or(0);
                    if at >= rev {
                        return;
                    }
                    last = format!("at revision {at}");
                }
                Err(e) => last = e.to_string(),
            }
        }
        assert!(
            Instant::now() < deadline,
            "member {i} did not catch up to revision {rev} ({last}):\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every key with its revisions, version and value, read `page` keys at a time (serializable,
/// from the member itself).
pub async fn dump(c: &mut Client, page: i64) -> Vec<(Vec<u8>, i64, i64, i64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut from = vec![0u8];
    loop {
        let opts = GetOptions::new()
            .with_from_key()
            .with_serializable()
            .with_limit(page);
        let r = c.get(from.clone(), Some(opts)).await.expect("range page");
        for kv in r.kvs() {
            out.push((
                kv.key().to_vec(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.value().to_vec(),
            ));
        }
        match r.kvs().last() {
            Some(kv) if r.more() => {
                from = kv.key().to_vec();
                from.push(0);
            }
            _ => return out,
        }
    }
}
