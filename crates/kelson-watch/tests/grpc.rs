//! The Watch service behind a real tonic server on 127.0.0.1:0, driven by the stock
//! `etcd-client` crate, as the API server and etcdctl-like tools will use it.

mod common;

use std::time::Duration;

use common::*;
use etcd_client::{Client, EventType, WatchFilterType, WatchOptions, WatchResponse, WatchStream};
use kelson_watch::{HubConfig, ERR_COMPACTED, ERR_DUPLICATE_ID, INVALID_WATCH_ID};

async fn connect(s: &Setup) -> Client {
    connect_svc(s.svc.clone()).await
}

async fn connect_svc(svc: kelson_watch::WatchService) -> Client {
    let addr = serve_grpc(svc).await;
    Client::connect([format!("http://{addr}")], None)
        .await
        .unwrap()
}

async fn next(ws: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(STEP, ws.message())
        .await
        .expect("timed out")
        .expect("stream error")
        .expect("stream ended")
}

async fn silence(ws: &mut WatchStream, wait: Duration) {
    if let Ok(r) = tokio::time::timeout(wait, ws.message()).await {
        panic!("unexpected {r:?}");
    }
}

fn revs(r: &WatchResponse) -> Vec<i64> {
    r.events()
        .iter()
        .map(|e| e.kv().unwrap().mod_revision())
        .collect()
}

/// Reads until an event at or after `last`, checking order, uniqueness and atomicity.
async fn collect(ws: &mut WatchStream, id: i64, last: i64) -> Vec<i64> {
    let mut all: Vec<i64> = Vec::new();
    for _ in 0..100_000 {
        if all.last().is_some_and(|&r| r >= last) {
            return all;
        }
        let r = next(ws).await;
        assert_eq!(r.watch_id(), id);
        assert!(!r.canceled(), "{r:?}");
        let got = revs(&r);
        if let (Some(p), Some(f)) = (all.last(), got.first()) {
            assert!(f > p, "revision {f} after {p}");
        }
        all.extend(got);
    }
    panic!("too many responses");
}

#[tokio::test]
async fn etcd_client_watch_key_and_prefix() {
    let s = default_setup();
    s.store.put("a", "0");
    let mut client = connect(&s).await;
    let mut ws = client.watch("a", None).await.unwrap();
    let created = next(&mut ws).await;
    assert!(created.created());
    assert_eq!(created.watch_id(), 0);
    let h = created.header().unwrap();
    assert_eq!(
        (h.revision(), h.cluster_id(), h.member_id(), h.raft_term()),
        (1, CLUSTER_ID, MEMBER_ID, RAFT_TERM)
    );

    ws.watch("p/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let c2 = next(&mut ws).await;
    assert!(c2.created() && c2.watch_id() == 1);

    s.store.put("a", "1");
    s.store.put("ab", "x");
    s.store.put("p/1", "y");
    s.store.put("q", "z");
    let r = next(&mut ws).await;
    assert_eq!((r.watch_id(), revs(&r)), (0, vec![2]));
    assert_eq!(r.events()[0].event_type(), EventType::Put);
    assert_eq!(r.events()[0].kv().unwrap().value(), b"1");
    let r = next(&mut ws).await;
    assert_eq!((r.watch_id(), revs(&r)), (1, vec![4]));
    assert_eq!(r.events()[0].kv().unwrap().key(), b"p/1");
    silence(&mut ws, Duration::from_millis(100)).await;
}

#[tokio::test]
async fn etcd_client_filters_and_prev_kv() {
    let s = default_setup();
    s.store.put("k", "old");
    let mut client = connect(&s).await;
    let opts = WatchOptions::new()
        .with_prev_key()
        .with_filters([WatchFilterType::NoDelete]);
    let mut ws = client.watch("k", Some(opts)).await.unwrap();
    assert!(next(&mut ws).await.created());
    ws.watch(
        "k",
        Some(
            WatchOptions::new()
                .with_filters([WatchFilterType::NoPut])
                .with_watch_id(50),
        ),
    )
    .await
    .unwrap();
    assert_eq!(next(&mut ws).await.watch_id(), 50);

    s.store.put("k", "new");
    let r = next(&mut ws).await;
    assert_eq!(r.watch_id(), 0);
    assert_eq!(r.events()[0].prev_kv().unwrap().value(), b"old");
    s.store.delete("k");
    let r = next(&mut ws).await;
    assert_eq!(r.watch_id(), 50);
    assert_eq!(r.events()[0].event_type(), EventType::Delete);
    assert!(r.events()[0].prev_kv().is_none(), "prev_kv not requested");
    silence(&mut ws, Duration::from_millis(100)).await;
}

#[tokio::test]
async fn etcd_client_replay_then_live_and_atomic_txn() {
    let s = setup(
        HubConfig {
            ring_events: 4,
            catchup_batch: 5,
        },
        Duration::ZERO,
    );
    for i in 0..40 {
        s.store.put(&format!("r/{}", i % 3), "v");
    }
    let mut client = connect(&s).await;
    let opts = WatchOptions::new().with_prefix().with_start_revision(3);
    let mut ws = client.watch("r/", Some(opts)).await.unwrap();
    assert!(next(&mut ws).await.created());
    assert_eq!(collect(&mut ws, 0, 40).await, (3..=40).collect::<Vec<_>>());

    // A multi-key transaction arrives in one response.
    let rev = s.store.txn(&[
        Op::Put(b"r/a", b"1"),
        Op::Put(b"r/b", b"2"),
        Op::Delete(b"r/0"),
    ]);
    let r = next(&mut ws).await;
    assert_eq!(revs(&r), vec![rev, rev, rev]);
    assert_eq!(r.header().unwrap().revision(), rev);
}

#[tokio::test]
async fn etcd_client_compacted_duplicate_and_cancel() {
    let s = default_setup();
    for i in 0..10 {
        s.store.put("k", &i.to_string());
    }
    s.store.compact(8);
    let mut client = connect(&s).await;
    let mut ws = client
        .watch("k", Some(WatchOptions::new().with_start_revision(4)))
        .await
        .unwrap();
    let created = next(&mut ws).await;
    assert!(created.created());
    let r = next(&mut ws).await;
    assert!(r.canceled());
    assert_eq!(r.watch_id(), created.watch_id());
    assert_eq!(r.compact_revision(), 8);
    assert_eq!(r.cancel_reason(), ERR_COMPACTED);

    ws.watch("k", Some(WatchOptions::new().with_watch_id(5)))
        .await
        .unwrap();
    assert_eq!(next(&mut ws).await.watch_id(), 5);
    ws.watch("j", Some(WatchOptions::new().with_watch_id(5)))
        .await
        .unwrap();
    let dup = next(&mut ws).await;
    assert!(dup.created() && dup.canceled());
    assert_eq!(dup.watch_id(), INVALID_WATCH_ID);
    assert_eq!(dup.cancel_reason(), ERR_DUPLICATE_ID);

    ws.cancel(5).await.unwrap();
    let r = next(&mut ws).await;
    assert!(r.canceled() && r.watch_id() == 5);
    s.store.put("k", "after");
    silence(&mut ws, Duration::from_millis(100)).await;
}

#[tokio::test]
async fn etcd_client_progress_notify_and_request_progress() {
    let s = setup(HubConfig::default(), Duration::from_millis(100));
    s.store.put("x", "1");
    let mut client = connect(&s).await;
    let mut ws = client
        .watch("k", Some(WatchOptions::new().with_progress_notify()))
        .await
        .unwrap();
    assert!(next(&mut ws).await.created());
    s.store.put("x", "2");
    let r = next(&mut ws).await;
    assert_eq!(r.watch_id(), 0);
    assert!(r.events().is_empty() && !r.canceled());
    assert_eq!(r.header().unwrap().revision(), 2);

    ws.request_progress().await.unwrap();
    // Periodic bookmarks may interleave; the stream-wide answer has watch id -1.
    for _ in 0..10 {
        let r = next(&mut ws).await;
        if r.watch_id() == INVALID_WATCH_ID {
            assert_eq!(r.header().unwrap().revision(), 2);
            return;
        }
    }
    panic!("no progress response");
}

#[tokio::test]
async fn etcd_client_fragment() {
    let s = default_setup();
    let mut client = connect_svc(s.svc.clone().with_max_response_bytes(32 * 1024)).await;
    let mut ws = client
        .watch(
            "f/",
            Some(WatchOptions::new().with_prefix().with_fragment()),
        )
        .await
        .unwrap();
    assert!(next(&mut ws).await.created());
    let value = vec![b'v'; 8 * 1024];
    let keys: Vec<String> = (0..16).map(|i| format!("f/{i:02}")).collect();
    let ops: Vec<Op<'_>> = keys.iter().map(|k| Op::Put(k.as_bytes(), &value)).collect();
    let rev = s.store.txn(&ops);
    // etcd-client does not expose the `fragment` flag (the direct tests check it); count parts.
    let mut parts = Vec::new();
    let mut n = 0;
    while n < 16 && parts.len() < 100 {
        let r = next(&mut ws).await;
        n += r.events().len();
        parts.push(r);
    }
    assert!(parts.len() >= 4, "{} parts", parts.len());
    assert_eq!(n, 16);
    assert!(parts.iter().all(|r| r.header().unwrap().revision() == rev));
}

#[tokio::test]
async fn etcd_client_many_watchers_and_a_slow_stream() {
    let s = setup(
        HubConfig {
            ring_events: 64,
            catchup_batch: 100,
        },
        Duration::ZERO,
    );
    let mut client = connect_svc(s.svc.clone().with_stream_buffer(4)).await;
    // 200 watchers over 10 streams of 20 watchers each.
    let mut streams = Vec::new();
    for _ in 0..10 {
        let mut ws = client
            .watch("m/", Some(WatchOptions::new().with_prefix()))
            .await
            .unwrap();
        assert!(next(&mut ws).await.created());
        for _ in 1..20 {
            ws.watch("m/", Some(WatchOptions::new().with_prefix()))
                .await
                .unwrap();
            assert!(next(&mut ws).await.created());
        }
        streams.push(ws);
    }
    // One more stream that nobody reads until the end.
    let mut slow = client
        .watch("m/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    assert!(next(&mut slow).await.created());

    let n: i64 = 300;
    let value = vec![b'x'; 2048];
    for i in 0..n {
        s.store
            .txn(&[Op::Put(format!("m/{}", i % 11).as_bytes(), &value)]);
        if i % 20 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let mut per_watcher: std::collections::BTreeMap<i64, Vec<i64>> = Default::default();
                let mut done = 0;
                for _ in 0..100_000 {
                    if done == 20 {
                        break;
                    }
                    let r = next(&mut ws).await;
                    let list = per_watcher.entry(r.watch_id()).or_default();
                    for rev in revs(&r) {
                        assert!(list.last().is_none_or(|&p| rev > p));
                        list.push(rev);
                        if rev == n {
                            done += 1;
                        }
                    }
                }
                per_watcher
            })
        })
        .collect();
    for t in tasks {
        let per = tokio::time::timeout(Duration::from_secs(20), t)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(per.len(), 20);
        for list in per.values() {
            assert_eq!(*list, (1..=n).collect::<Vec<_>>());
        }
    }
    assert_eq!(collect(&mut slow, 0, n).await, (1..=n).collect::<Vec<_>>());
}

/// The real etcdctl (3.4, Go clientv3) watching through our service, if installed.
#[tokio::test]
async fn etcdctl_watch_prefix() {
    use tokio::io::AsyncBufReadExt;
    let etcdctl = std::path::Path::new("/usr/bin/etcdctl");
    assert!(
        etcdctl.exists(),
        "/usr/bin/etcdctl is required (scripts/setup.sh installs etcd-client)"
    );
    let s = default_setup();
    let addr = serve_grpc(s.svc.clone()).await;
    let mut child = tokio::process::Command::new(etcdctl)
        .env("ETCDCTL_API", "3")
        .args([
            &format!("--endpoints=http://{addr}"),
            "--dial-timeout=3s",
            "watch",
            "--prefix",
            "--prev-kv",
            "e/",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // etcdctl prints nothing on creation, so keep writing until its first event shows up,
    // then delete the key and wait for the DELETE.
    let mut out: Vec<String> = Vec::new();
    let mut deleted = false;
    for i in 0..100 {
        if out.iter().any(|l| l == "DELETE") {
            break;
        }
        if out.is_empty() {
            s.store.put("e/k", &format!("v{i}"));
        } else if !deleted {
            s.store.delete("e/k");
            deleted = true;
        }
        if let Ok(line) = tokio::time::timeout(Duration::from_millis(200), lines.next_line()).await
        {
            out.push(line.unwrap().unwrap_or_default());
        }
    }
    assert_eq!(out.first().map(String::as_str), Some("PUT"), "{out:?}");
    assert_eq!(out.get(1).map(String::as_str), Some("e/k"), "{out:?}");
    assert!(out.iter().any(|l| l == "DELETE"), "{out:?}");
    child.kill().await.unwrap();
}
