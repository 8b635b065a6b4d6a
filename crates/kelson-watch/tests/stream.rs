//! Watch semantics driven directly through `WatchService::serve_stream` (no transport), where
//! timing (slow consumers, catch-up from the store, progress) can be controlled precisely.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use kelson_etcdpb::etcdserverpb::watch_create_request::FilterType;
use kelson_etcdpb::mvccpb::event::EventType;
use kelson_watch::{HubConfig, ERR_COMPACTED, ERR_DUPLICATE_ID, ERR_EMPTY_RANGE, INVALID_WATCH_ID};

#[tokio::test]
async fn created_comes_first_with_current_revision_then_events() {
    let s = default_setup();
    s.store.put("a", "0");
    let mut c = Client::open(&s.svc);
    let created = c.watch(key("a")).await;
    assert_eq!(created.watch_id, 0);
    let h = created.header.unwrap();
    assert_eq!(
        (h.revision, h.cluster_id, h.member_id, h.raft_term),
        (1, CLUSTER_ID, MEMBER_ID, RAFT_TERM)
    );
    assert!(created.events.is_empty());

    let rev = s.store.put("a", "1");
    let resp = c.next().await;
    assert_eq!(resp.watch_id, 0);
    assert_eq!(resp.header.unwrap().revision, rev);
    assert_eq!(resp.events.len(), 1);
    assert_eq!(resp.events[0].kv.as_ref().unwrap().value, b"1");
    // Auto ids increase per stream.
    assert_eq!(c.watch(key("b")).await.watch_id, 1);
}

#[tokio::test]
async fn key_prefix_and_from_key_selection() {
    let s = default_setup();
    let mut c = Client::open(&s.svc);
    let single = c.watch(key("foo")).await.watch_id;
    let pre = c.watch(prefix("foo/")).await.watch_id;
    let mut from = key("m");
    from.range_end = vec![0];
    let from = c.watch(from).await.watch_id;

    for k in ["foo", "foo/1", "foo0", "fo", "zeta", "foo/2"] {
        s.store.put(k, "v");
    }
    let mut got: Vec<(i64, String)> = Vec::new();
    while got.len() < 4 {
        let r = c.next().await;
        for e in &r.events {
            got.push((
                r.watch_id,
                String::from_utf8(e.kv.as_ref().unwrap().key.clone()).unwrap(),
            ));
        }
    }
    got.sort();
    let mut want = vec![
        (single, "foo".to_string()),
        (pre, "foo/1".to_string()),
        (pre, "foo/2".to_string()),
        (from, "zeta".to_string()),
    ];
    want.sort();
    assert_eq!(got, want);
    // foo0 and fo match nothing.
    c.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn noput_and_nodelete_filters() {
    let s = default_setup();
    let mut c = Client::open(&s.svc);
    let mut np = key("k");
    np.filters = vec![FilterType::Noput as i32];
    let np = c.watch(np).await.watch_id;
    let mut nd = key("k");
    nd.filters = vec![FilterType::Nodelete as i32];
    let nd = c.watch(nd).await.watch_id;

    let put_rev = s.store.put("k", "v");
    let del_rev = s.store.delete("k");
    let mut a = c.next().await;
    let mut b = c.next().await;
    if a.watch_id == np {
        std::mem::swap(&mut a, &mut b);
    }
    assert_eq!(a.events.len() + b.events.len(), 2);
    assert_eq!(
        (a.watch_id, a.events[0].r#type, rev_of(&a.events[0])),
        (nd, EventType::Put as i32, put_rev)
    );
    assert_eq!(
        (b.watch_id, b.events[0].r#type, rev_of(&b.events[0])),
        (np, EventType::Delete as i32, del_rev)
    );
    c.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn prev_kv_only_when_asked() {
    let s = default_setup();
    s.store.put("k", "old");
    let mut c = Client::open(&s.svc);
    let plain = c.watch(key("k")).await.watch_id;
    let mut with = key("k");
    with.prev_kv = true;
    let with = c.watch(with).await.watch_id;
    s.store.put("k", "new");
    for _ in 0..2 {
        let r = c.next().await;
        let prev = r.events[0].prev_kv.as_ref();
        if r.watch_id == plain {
            assert!(prev.is_none());
        } else {
            assert_eq!(r.watch_id, with);
            assert_eq!(prev.unwrap().value, b"old");
        }
    }
}

#[tokio::test]
async fn prev_kv_watcher_never_misses_prev_kv_of_a_batch_published_without_it() {
    let s = default_setup();
    s.store.set_lazy_prev_kv(true);
    s.store.put("k", "old");
    // No prev_kv watcher yet: this batch goes into the ring without prev_kv.
    let mid = s.store.put("k", "mid");
    assert!(!s.hub.wants_prev_kv());
    let mut c = Client::open(&s.svc);
    let mut req = key("k");
    req.prev_kv = true;
    req.start_revision = mid; // still in the ring, but without its prev_kv
    let before = s.store.events_calls.load(Ordering::Relaxed);
    let id = c.watch(req).await.watch_id;
    assert!(s.hub.wants_prev_kv());
    let r = c.next().await;
    assert_eq!(r.watch_id, id);
    assert_eq!(r.events[0].kv.as_ref().unwrap().value, b"mid");
    assert_eq!(r.events[0].prev_kv.as_ref().unwrap().value, b"old");
    let after_catchup = s.store.events_calls.load(Ordering::Relaxed);
    assert!(
        after_catchup > before,
        "the incomplete batch must be read from the store"
    );
    // Published while the watcher exists: complete, served from the ring.
    s.store.put("k", "new");
    let r = c.next().await;
    assert_eq!(r.events[0].prev_kv.as_ref().unwrap().value, b"mid");
    assert_eq!(s.store.events_calls.load(Ordering::Relaxed), after_catchup);
    c.cancel(id).await;
    // The count drops with the watcher (bounded wait: the stream task drops it).
    for _ in 0..100 {
        if !s.hub.wants_prev_kv() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!s.hub.wants_prev_kv());
}

#[tokio::test]
async fn past_start_replays_from_store_then_continues_live_without_gap_or_dup() {
    // A small ring and small store batches force several store reads and a ring hand-over.
    let s = setup(
        HubConfig {
            ring_events: 8,
            catchup_batch: 7,
        },
        Duration::ZERO,
    );
    for i in 0..50 {
        s.store.put(&format!("k{}", i % 5), "v");
    }
    let mut c = Client::open(&s.svc);
    let mut req = prefix("k");
    req.start_revision = 10;
    let id = c.watch(req).await.watch_id;
    let writer = {
        let store = s.store.clone();
        tokio::spawn(async move {
            for i in 0..100 {
                store.put(&format!("k{}", i % 5), "w");
                if i % 10 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let revs = collect_until(&mut c, id, 150).await;
    writer.await.unwrap();
    assert_eq!(revs, (10..=150).collect::<Vec<_>>());
    assert!(s.store.events_calls.load(Ordering::Relaxed) >= 2);
    c.expect_silence(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn resume_from_last_revision_plus_one_continues_exactly() {
    let s = default_setup();
    let mut c = Client::open(&s.svc);
    let id = c.watch(prefix("r/")).await.watch_id;
    for i in 0..10 {
        s.store.put(&format!("r/{i}"), "v");
    }
    let first = collect_until(&mut c, id, 5).await;
    drop(c);
    for i in 10..20 {
        s.store.put(&format!("r/{i}"), "v");
    }
    let mut c2 = Client::open(&s.svc);
    let mut req = prefix("r/");
    req.start_revision = first.last().unwrap() + 1;
    let id2 = c2.watch(req).await.watch_id;
    let rest = collect_until(&mut c2, id2, 20).await;
    let all: Vec<i64> = first.into_iter().chain(rest).collect();
    assert_eq!(all, (1..=20).collect::<Vec<_>>());
}

#[tokio::test]
async fn compacted_start_is_created_then_canceled_with_compact_revision() {
    let s = default_setup();
    for i in 0..10 {
        s.store.put("k", &i.to_string());
    }
    s.store.compact(6);
    let mut c = Client::open(&s.svc);
    let mut req = key("k");
    req.start_revision = 5;
    let id = c.watch(req).await.watch_id;
    let r = c.next().await;
    assert_eq!(r.watch_id, id);
    assert!(r.canceled);
    assert_eq!(r.compact_revision, 6);
    assert_eq!(r.cancel_reason, ERR_COMPACTED);
    // The watcher is gone: new writes produce nothing.
    s.store.put("k", "x");
    c.expect_silence(Duration::from_millis(100)).await;

    // Starting at the compact revision works (etcd refuses only revisions below it).
    let mut req = key("k");
    req.start_revision = 6;
    let id = c.watch(req).await.watch_id;
    assert_eq!(
        collect_until(&mut c, id, 11).await,
        vec![6, 7, 8, 9, 10, 11]
    );
}

#[tokio::test]
async fn lagging_watcher_behind_a_compaction_is_canceled() {
    // A one-event ring and two-event store batches: a stalled watcher needs the store, and the
    // store has compacted what it has not seen yet.
    let s = setup(
        HubConfig {
            ring_events: 1,
            catchup_batch: 2,
        },
        Duration::ZERO,
    );
    let mut c = Client::open(&s.svc);
    let id = c.watch(key("k")).await.watch_id;
    let slow_svc = s.svc.clone().with_stream_buffer(1);
    let mut slow = Client::open(&slow_svc);
    let slow_id = slow.watch(key("k")).await.watch_id;
    for i in 0..20 {
        s.store.put("k", &i.to_string());
    }
    assert_eq!(
        collect_until(&mut c, id, 20).await,
        (1..=20).collect::<Vec<_>>()
    );
    s.store.compact(15);
    s.store.put("k", "last");
    assert_eq!(collect_until(&mut c, id, 21).await, vec![21]);
    // The slow one: a prefix of the history, then a compaction cancel (never a silent gap).
    let mut revs = Vec::new();
    for _ in 0..100 {
        let r = slow.next().await;
        assert_eq!(r.watch_id, slow_id);
        if r.canceled {
            assert_eq!(r.compact_revision, 15);
            assert_eq!(r.cancel_reason, ERR_COMPACTED);
            break;
        }
        revs.extend(r.events.iter().map(rev_of));
    }
    assert_eq!(revs, (1..=revs.len() as i64).collect::<Vec<_>>());
    assert!(revs.len() < 15, "{revs:?}");
    s.store.put("k", "after");
    slow.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn cancel_stops_events() {
    let s = default_setup();
    let mut c = Client::open(&s.svc);
    let id = c.watch(key("k")).await.watch_id;
    let other = c.watch(key("j")).await.watch_id;
    c.cancel(id).await;
    let r = c.next().await;
    assert!(r.canceled && r.watch_id == id && !r.created);
    // Canceling an unknown id is ignored, as in etcd.
    c.cancel(99).await;
    s.store.put("k", "v");
    s.store.put("j", "v");
    let r = c.next().await;
    assert_eq!(r.watch_id, other);
    c.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn duplicate_and_chosen_watch_ids() {
    let s = default_setup();
    let mut c = Client::open(&s.svc);
    let mut req = key("k");
    req.watch_id = 7;
    assert_eq!(c.watch(req.clone()).await.watch_id, 7);
    let dup = c.watch(req).await;
    assert!(dup.canceled);
    assert_eq!(dup.watch_id, INVALID_WATCH_ID);
    assert_eq!(dup.cancel_reason, ERR_DUPLICATE_ID);
    // Auto ids skip ids the client chose.
    let mut req = key("k");
    req.watch_id = 1;
    assert_eq!(c.watch(req).await.watch_id, 1);
    assert_eq!(c.watch(key("k")).await.watch_id, 0);
    assert_eq!(c.watch(key("k")).await.watch_id, 2);
    // Invalid range and negative start are refused at creation.
    let mut bad = key("b");
    bad.range_end = b"a".to_vec();
    let r = c.watch(bad).await;
    assert!(r.canceled && r.cancel_reason == ERR_EMPTY_RANGE);
    let mut neg = key("k");
    neg.start_revision = -3;
    assert!(c.watch(neg).await.canceled);
}

#[tokio::test]
async fn progress_notify_sends_bookmarks_to_idle_synced_watchers() {
    let s = setup(HubConfig::default(), Duration::from_millis(100));
    s.store.put("other", "v");
    let mut c = Client::open(&s.svc);
    let mut req = key("k");
    req.progress_notify = true;
    let id = c.watch(req).await.watch_id;
    let _silent = c.watch(key("k2")).await.watch_id;
    s.store.put("other", "w"); // revision 2, not watched
    let r = c.next().await;
    assert_eq!(r.watch_id, id);
    assert!(r.events.is_empty() && !r.canceled && !r.created);
    assert_eq!(r.header.unwrap().revision, 2);
    // Only the progress_notify watcher ever gets bookmarks.
    let r = c.next().await;
    assert_eq!(r.watch_id, id);
}

#[tokio::test]
async fn progress_request_answers_stream_wide_after_catch_up() {
    let s = setup(
        HubConfig {
            ring_events: 4,
            catchup_batch: 3,
        },
        Duration::ZERO,
    );
    let mut c = Client::open(&s.svc);
    c.progress().await;
    let r = c.next().await;
    assert_eq!(
        (r.watch_id, r.header.unwrap().revision),
        (INVALID_WATCH_ID, 0)
    );

    for i in 0..30 {
        s.store.put("k", &i.to_string());
    }
    let mut req = key("k");
    req.start_revision = 1;
    c.create(req).await;
    c.progress().await;
    assert!(c.next().await.created);
    // All 30 events must precede the progress response that claims revision 30.
    let mut seen = 0;
    loop {
        let r = c.next().await;
        if r.watch_id == INVALID_WATCH_ID {
            assert_eq!(r.header.unwrap().revision, 30);
            break;
        }
        seen += r.events.len();
    }
    assert_eq!(seen, 30);
}

#[tokio::test]
async fn a_revision_is_never_split_without_fragment_and_is_fragmented_with_it() {
    let s = default_setup();
    let svc = s.svc.clone().with_max_response_bytes(64 * 1024);
    let mut c = Client::open(&svc);
    let plain = c.watch(prefix("big/")).await.watch_id;
    let mut req = prefix("big/");
    req.fragment = true;
    let frag = c.watch(req).await.watch_id;

    let value = vec![b'x'; 16 * 1024];
    let keys: Vec<String> = (0..20).map(|i| format!("big/{i:02}")).collect();
    let ops: Vec<Op<'_>> = keys.iter().map(|k| Op::Put(k.as_bytes(), &value)).collect();
    let rev = s.store.txn(&ops);

    let mut frag_parts = Vec::new();
    let mut plain_resps = Vec::new();
    while plain_resps.is_empty()
        || frag_parts
            .last()
            .is_none_or(|r: &kelson_etcdpb::WatchResponse| r.fragment)
    {
        let r = c.next().await;
        if r.watch_id == plain {
            plain_resps.push(r);
        } else {
            assert_eq!(r.watch_id, frag);
            frag_parts.push(r);
        }
    }
    assert_eq!(plain_resps.len(), 1);
    assert_eq!(plain_resps[0].events.len(), 20);
    assert!(frag_parts.len() >= 4, "{} fragments", frag_parts.len());
    let (last, rest) = frag_parts.split_last().unwrap();
    assert!(rest.iter().all(|r| r.fragment) && !last.fragment);
    let all: Vec<&[u8]> = frag_parts
        .iter()
        .flat_map(|r| {
            r.events
                .iter()
                .map(|e| e.kv.as_ref().unwrap().key.as_slice())
        })
        .collect();
    let want: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
    assert_eq!(all, want);
    assert!(frag_parts
        .iter()
        .all(|r| r.header.as_ref().unwrap().revision == rev));
    assert!(frag_parts
        .iter()
        .all(|r| prost::Message::encoded_len(r) <= 64 * 1024));
}

#[tokio::test]
async fn slow_consumer_does_not_block_others_and_catches_up_in_order() {
    let s = setup(
        HubConfig {
            ring_events: 16,
            catchup_batch: 50,
        },
        Duration::ZERO,
    );
    let slow_svc = s.svc.clone().with_stream_buffer(2);
    let mut slow = Client::open(&slow_svc);
    let slow_id = slow.watch(prefix("s/")).await.watch_id;
    let mut fast = Client::open(&s.svc);
    let fast_id = fast.watch(prefix("s/")).await.watch_id;

    let n = 500;
    let writer = {
        let store = s.store.clone();
        tokio::spawn(async move {
            for i in 0..n {
                store.put(&format!("s/{}", i % 7), "v");
                if i % 25 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    // The fast client gets everything while the slow one reads nothing.
    let fast_revs = collect_until(&mut fast, fast_id, n).await;
    assert_eq!(fast_revs, (1..=n).collect::<Vec<_>>());
    writer.await.unwrap();
    let calls_before = s.store.events_calls.load(Ordering::Relaxed);
    let slow_revs = collect_until(&mut slow, slow_id, n).await;
    assert_eq!(slow_revs, (1..=n).collect::<Vec<_>>());
    // It fell behind the 16-event ring, so it must have caught up from the store.
    assert!(s.store.events_calls.load(Ordering::Relaxed) > calls_before);
}

#[tokio::test]
async fn many_watchers_all_get_every_event() {
    let s = default_setup();
    let mut clients = Vec::new();
    for _ in 0..200 {
        let mut c = Client::open(&s.svc);
        let id = c.watch(prefix("m/")).await.watch_id;
        clients.push((c, id));
    }
    let n = 100;
    for i in 0..n {
        s.store.put(&format!("m/{}", i % 13), "v");
    }
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|(mut c, id)| tokio::spawn(async move { collect_until(&mut c, id, n).await }))
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), (1..=n).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn reset_sends_lagging_watchers_to_the_store() {
    let s = default_setup();
    let mut c = Client::open(&s.svc);
    let id = c.watch(key("k")).await.watch_id;
    s.store.put("k", "1");
    assert_eq!(collect_until(&mut c, id, 1).await, vec![1]);
    // As after a snapshot install: the store moved to revision 5 without publishing events.
    s.store.set_publishing(false);
    for i in 2..=5 {
        s.store.put("k", &i.to_string());
    }
    s.store.set_publishing(true);
    s.hub.reset(5);
    assert_eq!(s.hub.current_revision(), 5);
    s.store.put("k", "6");
    assert_eq!(collect_until(&mut c, id, 6).await, vec![2, 3, 4, 5, 6]);
}
