//! Crash durability of the unlogged apply path: applied state goes to RocksDB without its WAL
//! (the fsynced Raft log is the WAL), so after `kill -9` the member must rebuild everything it
//! acknowledged by re-applying the log after the last flushed applied index. A small
//! `--snapshot-count` makes log compaction (and the flush that must precede it) happen several
//! times during the load.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, Txn, TxnOp};
use kelson_testsupport::{free_port, ChildGuard};
use parking_lot::Mutex;

const BIN: &str = env!("CARGO_BIN_EXE_kelson-kv");

fn spawn(dir: &Path, client: u16, peer: u16) -> ChildGuard {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "--name",
        "d",
        "--no-dbus",
        "--snapshot-count",
        "300",
        "--data-dir",
    ])
    .arg(dir.join("data"))
    .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
    .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
    .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
    .arg(format!(
        "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
    ));
    ChildGuard::spawn("kelson-kv", cmd, &dir.join("kv.log")).unwrap()
}

async fn connect(ep: &str, kv: &ChildGuard) -> Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut c) = Client::connect([ep], None).await {
            if c.get("probe", None).await.is_ok() {
                return c;
            }
        }
        assert!(
            Instant::now() < deadline,
            "kelson-kv did not come up:\n{}",
            kv.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a writer saw acknowledged: key -> (value, mod revision from the response header).
type Acked = Arc<Mutex<BTreeMap<String, (String, i64)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_load_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let (client_port, peer_port) = (free_port(), free_port());
    let ep = format!("127.0.0.1:{client_port}");
    let mut kv = spawn(dir.path(), client_port, peer_port);
    let c = connect(&ep, &kv).await;

    // 16 writers: each overwrites its own few keys (so keys have versions > 1 and histories)
    // and records every acknowledged value with its revision.
    let acked: Acked = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..16 {
        let mut c = c.clone();
        let acked = acked.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 100_000 {
                let key = format!("k/{w:02}/{}", n % 7);
                let value = format!("v{n}");
                let res = if n.is_multiple_of(5) {
                    // A txn write too: its events and revision go through the same path.
                    c.txn(Txn::new().and_then([TxnOp::put(key.clone(), value.clone(), None)]))
                        .await
                        .map(|r| r.header().map_or(0, |h| h.revision()))
                } else {
                    c.put(key.clone(), value.clone(), None)
                        .await
                        .map(|r| r.header().map_or(0, |h| h.revision()))
                };
                match res {
                    Ok(rev) => {
                        acked.lock().insert(key, (value, rev));
                    }
                    Err(_) => break, // the server was killed under us
                }
                n += 1;
            }
        }));
    }
    // Let the load run across several log compactions, then crash the server mid-stream.
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.lock().values().map(|(_, r)| *r).max().unwrap_or(0) < 1500 {
        assert!(
            Instant::now() < deadline,
            "load too slow:\n{}",
            kv.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    kv.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    let acked = acked.lock().clone();
    let max_rev = acked.values().map(|(_, r)| *r).max().unwrap();
    assert!(acked.len() > 50, "only {} keys acknowledged", acked.len());

    let kv = spawn(dir.path(), client_port, peer_port);
    let mut c = connect(&ep, &kv).await;
    let got = c
        .get("k/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let now = got.header().unwrap().revision();
    assert!(
        now >= max_rev,
        "store revision {now} is behind the acknowledged revision {max_rev}"
    );
    let stored: BTreeMap<String, (String, i64, i64)> = got
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                (
                    kv.value_str().unwrap().to_string(),
                    kv.mod_revision(),
                    kv.version(),
                ),
            )
        })
        .collect();
    for (key, (value, rev)) in &acked {
        let (v, mod_rev, version) = stored
            .get(key)
            .unwrap_or_else(|| panic!("acknowledged key {key} lost\n{}", kv.log_tail(30)));
        // A write in flight when the server died may have been applied after the last ack
        // seen: then the key is newer, never older.
        assert!(
            mod_rev >= rev,
            "{key}: acknowledged at revision {rev}, found {mod_rev}"
        );
        if mod_rev == rev {
            assert_eq!(v, value, "{key} at revision {rev}");
        }
        assert!(*version >= 1);
    }
    // Revisions stay consistent: the next write lands right after the current revision, and a
    // history read at an acknowledged revision still works.
    let r = c.put("k/after", "x", None).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), now + 1);
    let (key, (_, rev)) = acked.iter().next().unwrap();
    let old = c
        .get(key.as_str(), Some(GetOptions::new().with_revision(*rev)))
        .await
        .unwrap();
    assert_eq!(old.kvs()[0].mod_revision(), *rev);
}
