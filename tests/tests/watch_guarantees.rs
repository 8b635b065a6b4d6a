//! etcd's documented watch guarantees, checked through `etcd-client` against the real etcd and
//! kelson-kv: ordered (by revision), unique (no event twice), reliable (no gap, also across a
//! compaction of old revisions while watching), atomic (one revision's events in one
//! response), resumable (re-watch from last revision + 1 continues the sequence), bookmarkable
//! (a requested progress notification's revision bounds all later events from below); a watch
//! starting at a compacted revision is canceled with `compact_revision` set; and concurrent
//! watchers on overlapping ranges each see exactly their events.
//!
//! The expected event list is derived from the write responses (each write's header revision),
//! so every comparison is exact: order, multiplicity and content.
//!
//! Owned by the compatibility-suite engineer.

#[macro_use]
mod compat_support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use compat_support::start;
use etcd_client::{
    Client, CompactionOptions, EventType, Txn, TxnOp, WatchOptions, WatchResponse, WatchStream,
};
use kelson_testsupport::{ClusterOpts, StoreCluster, StoreKind};

store_tests!(
    ordered_unique_reliable_across_compaction,
    txn_events_arrive_in_one_response,
    resumable_after_cancel,
    progress_notify_bookmarks,
    watch_at_compacted_revision_is_canceled,
    overlapping_watchers_see_exactly_their_events,
);

/// One event as compared: revision, type, key, value (empty for deletes).
type Ev = (i64, &'static str, String, String);

fn evs(resp: &WatchResponse) -> Vec<Ev> {
    resp.events()
        .iter()
        .map(|e| {
            let kv = e.kv().expect("event without kv");
            let t = match e.event_type() {
                EventType::Put => "PUT",
                EventType::Delete => "DELETE",
            };
            let value = if t == "PUT" {
                String::from_utf8_lossy(kv.value()).into_owned()
            } else {
                String::new()
            };
            (
                kv.mod_revision(),
                t,
                String::from_utf8_lossy(kv.key()).into_owned(),
                value,
            )
        })
        .collect()
}

/// The next response on `s`, or a panic naming what was awaited (with member logs).
async fn next(s: &mut WatchStream, c: &StoreCluster, what: &str) -> WatchResponse {
    match tokio::time::timeout(Duration::from_secs(10), s.message()).await {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => panic!("watch stream ended while waiting for {what}\n{}", c.logs()),
        Ok(Err(e)) => panic!(
            "watch stream error while waiting for {what}: {e}\n{}",
            c.logs()
        ),
        Err(_) => panic!(
            "no watch response within 10 s while waiting for {what}\n{}",
            c.logs()
        ),
    }
}

/// Opens a watch and waits for its `created` response; returns the stream and watch id.
async fn open(
    client: &mut Client,
    c: &StoreCluster,
    key: &str,
    o: WatchOptions,
) -> (WatchStream, i64) {
    let mut s = client
        .watch(key, Some(o))
        .await
        .unwrap_or_else(|e| panic!("watch {key}: {e}\n{}", c.logs()));
    let r = next(&mut s, c, "the created response").await;
    assert!(
        r.created() && !r.canceled(),
        "first response must be `created`: {r:?}"
    );
    let id = r.watch_id();
    (s, id)
}

async fn current_rev(client: &mut Client) -> i64 {
    let r = client.get("\0", None).await.expect("get");
    r.header().map(|h| h.revision()).unwrap_or(0)
}

/// Reads events on `s` until one with revision >= `until` arrived (bounded); asserts that no
/// response is a cancellation. Returns events with their response index.
async fn collect(s: &mut WatchStream, c: &StoreCluster, until: i64) -> Vec<(usize, Ev)> {
    let mut out = Vec::new();
    let mut n = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while out.last().map(|(_, e): &(usize, Ev)| e.0).unwrap_or(0) < until {
        assert!(
            tokio::time::Instant::now() < deadline,
            "events up to revision {until} did not arrive in 15 s; last {:?}\n{}",
            out.last(),
            c.logs()
        );
        let r = next(s, c, &format!("events up to revision {until}")).await;
        assert!(
            !r.canceled(),
            "watch canceled unexpectedly: {r:?}\n{}",
            c.logs()
        );
        for e in evs(&r) {
            out.push((n, e));
        }
        n += 1;
    }
    out
}

fn only_events(v: Vec<(usize, Ev)>) -> Vec<Ev> {
    v.into_iter().map(|(_, e)| e).collect()
}

/// Records writes and the events they must produce.
struct Writer {
    client: Client,
    expected: Vec<Ev>,
    last_rev: i64,
}

impl Writer {
    async fn put(&mut self, key: &str, value: &str) -> i64 {
        let r = self.client.put(key, value, None).await.expect("put");
        let rev = r.header().expect("header").revision();
        self.expected.push((rev, "PUT", key.into(), value.into()));
        self.last_rev = rev;
        rev
    }

    async fn del(&mut self, key: &str) {
        let r = self.client.delete(key, None).await.expect("delete");
        // Deleting nothing takes no revision and produces no event.
        if r.deleted() > 0 {
            let rev = r.header().expect("header").revision();
            self.expected
                .push((rev, "DELETE", key.into(), String::new()));
            self.last_rev = rev;
        }
    }

    /// One txn putting every pair: one revision, events in op order.
    async fn txn(&mut self, kvs: &[(String, String)]) -> i64 {
        let ops: Vec<TxnOp> = kvs
            .iter()
            .map(|(k, v)| TxnOp::put(k.as_str(), v.as_str(), None))
            .collect();
        let r = self
            .client
            .txn(Txn::new().and_then(ops))
            .await
            .expect("txn");
        assert!(r.succeeded());
        let rev = r.header().expect("header").revision();
        for (k, v) in kvs {
            self.expected.push((rev, "PUT", k.clone(), v.clone()));
        }
        self.last_rev = rev;
        rev
    }

    /// Keeps only expected events for keys `keep` accepts.
    fn expected_for(&self, keep: impl Fn(&str) -> bool) -> Vec<Ev> {
        self.expected
            .iter()
            .filter(|e| keep(&e.2))
            .cloned()
            .collect()
    }
}

async fn ordered_unique_reliable_across_compaction(kind: StoreKind) {
    // Writes go through m0, the watch is served by m1: the follower's stream is what is checked.
    let c = start(kind, 3, ClusterOpts::default()).await;
    let mut wc = c.member_client(1).await.unwrap();
    let start_rev = current_rev(&mut wc).await + 1;
    let (mut s, _) = open(
        &mut wc,
        &c,
        "r/",
        WatchOptions::new()
            .with_prefix()
            .with_start_revision(start_rev),
    )
    .await;
    let mut w = Writer {
        client: c.member_client(0).await.unwrap(),
        expected: Vec::new(),
        last_rev: 0,
    };
    let mut compact_at = 0;
    for i in 0..400 {
        w.put(&format!("r/{:02}", i % 37), &format!("v{i}")).await;
        if i % 7 == 0 {
            w.del(&format!("r/{:02}", (i * 3) % 37)).await;
        }
        if i % 50 == 25 {
            let kvs: Vec<_> = (0..3)
                .map(|j| (format!("r/t{j}"), format!("t{i}")))
                .collect();
            w.txn(&kvs).await;
        }
        if i % 10 == 0 {
            // Outside the prefix: advances the revision, must not be delivered.
            w.put("zz/outside", "x").await;
        }
        if i == 100 {
            compact_at = w.last_rev;
        }
        if i == 300 {
            // Compact old history while the watcher is streaming.
            w.client
                .compact(compact_at, Some(CompactionOptions::new().with_physical()))
                .await
                .unwrap_or_else(|e| panic!("compact {compact_at}: {e}\n{}", c.logs()));
        }
    }
    let want = w.expected_for(|k| k.starts_with("r/"));
    let got = only_events(collect(&mut s, &c, want.last().unwrap().0).await);
    assert!(
        got.windows(2).all(|p| p[0].0 <= p[1].0),
        "events out of revision order\n{}",
        c.logs()
    );
    if got != want {
        let first_diff = got.iter().zip(&want).position(|(a, b)| a != b);
        panic!(
            "{}: watched events differ from writes: got {} events, want {}; first difference at \
             {first_diff:?}: got {:?} want {:?}\n{}",
            kind.name(),
            got.len(),
            want.len(),
            first_diff.and_then(|i| got.get(i)),
            first_diff.and_then(|i| want.get(i)),
            c.logs()
        );
    }
}

async fn txn_events_arrive_in_one_response(kind: StoreKind) {
    let c = start(kind, 1, ClusterOpts::default()).await;
    let mut client = c.client().await.unwrap();
    let start_rev = current_rev(&mut client).await + 1;
    let (mut s, _) = open(
        &mut client,
        &c,
        "t/",
        WatchOptions::new()
            .with_prefix()
            .with_start_revision(start_rev),
    )
    .await;
    let mut w = Writer {
        client: client.clone(),
        expected: Vec::new(),
        last_rev: 0,
    };
    let mut txn_revs = Vec::new();
    for n in 0..20 {
        w.put(&format!("t/single{n}"), "s").await;
        let kvs: Vec<_> = (0..5)
            .map(|j| (format!("t/{n:02}/{j}"), format!("{n}-{j}")))
            .collect();
        txn_revs.push(w.txn(&kvs).await);
    }
    let got = collect(&mut s, &c, w.last_rev).await;
    assert_eq!(
        got.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(),
        w.expected,
        "events differ from writes\n{}",
        c.logs()
    );
    // Which responses carried each revision: exactly one per revision.
    let mut by_rev: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for (resp, e) in &got {
        let v = by_rev.entry(e.0).or_default();
        if !v.contains(resp) {
            v.push(*resp);
        }
    }
    for r in &txn_revs {
        assert_eq!(
            by_rev.get(r).map(Vec::len),
            Some(1),
            "txn revision {r} split over responses {:?}",
            by_rev.get(r)
        );
        assert_eq!(
            got.iter().filter(|(_, e)| e.0 == *r).count(),
            5,
            "txn revision {r}"
        );
    }
}

async fn resumable_after_cancel(kind: StoreKind) {
    let c = start(kind, 1, ClusterOpts::default()).await;
    let mut client = c.client().await.unwrap();
    let start_rev = current_rev(&mut client).await + 1;
    let (mut s, id) = open(
        &mut client,
        &c,
        "s/",
        WatchOptions::new()
            .with_prefix()
            .with_start_revision(start_rev),
    )
    .await;
    let mut w = Writer {
        client: client.clone(),
        expected: Vec::new(),
        last_rev: 0,
    };
    for i in 0..100 {
        w.put(&format!("s/{}", i % 13), &format!("a{i}")).await;
    }
    // Take part of the stream, then cancel mid-way.
    let mut got = only_events(collect(&mut s, &c, w.expected[39].0).await);
    s.cancel(id).await.expect("cancel");
    // Events already in flight before the cancel confirmation still count as seen.
    loop {
        let r = next(&mut s, &c, "the cancel confirmation").await;
        got.extend(evs(&r));
        if r.canceled() {
            assert_eq!(r.watch_id(), id);
            break;
        }
    }
    let last_seen = got.last().unwrap().0;
    for i in 0..100 {
        w.put(&format!("s/{}", i % 11), &format!("b{i}")).await;
        if i % 9 == 0 {
            w.del(&format!("s/{}", i % 13)).await;
        }
    }
    let (mut s2, _) = open(
        &mut client,
        &c,
        "s/",
        WatchOptions::new()
            .with_prefix()
            .with_start_revision(last_seen + 1),
    )
    .await;
    got.extend(only_events(collect(&mut s2, &c, w.last_rev).await));
    assert_eq!(
        got.len(),
        w.expected.len(),
        "event count after resuming at {}\n{}",
        last_seen + 1,
        c.logs()
    );
    assert_eq!(
        got,
        w.expected,
        "resumed sequence is not continuous\n{}",
        c.logs()
    );
}

/// Waits for a progress notification (no events, not created/canceled); events that arrive
/// before it are returned too.
async fn progress(s: &mut WatchStream, c: &StoreCluster) -> (i64, Vec<Ev>) {
    let mut before = Vec::new();
    for _ in 0..1000 {
        let r = next(s, c, "a progress notification").await;
        assert!(!r.canceled(), "{r:?}");
        if r.events().is_empty() && !r.created() {
            return (r.header().expect("progress header").revision(), before);
        }
        before.extend(evs(&r));
    }
    panic!("no progress notification among 1000 responses");
}

async fn progress_notify_bookmarks(kind: StoreKind) {
    let c = start(kind, 1, ClusterOpts::default()).await;
    let mut client = c.client().await.unwrap();
    let start_rev = current_rev(&mut client).await + 1;
    let o = WatchOptions::new()
        .with_prefix()
        .with_start_revision(start_rev)
        .with_progress_notify();
    let (mut s, _) = open(&mut client, &c, "p/", o).await;
    let mut w = Writer {
        client: client.clone(),
        expected: Vec::new(),
        last_rev: 0,
    };
    let mut got: Vec<Ev> = Vec::new();
    let mut bookmark = 0;
    for round in 0..5 {
        for i in 0..10 {
            w.put(&format!("p/{round}/{i}"), "v").await;
        }
        // The watcher is caught up on its prefix once it has every event written so far.
        let last_in_prefix = w.last_rev;
        let outside = w.put("q/outside", &round.to_string()).await;
        w.expected.pop();
        got.extend(only_events(collect(&mut s, &c, last_in_prefix).await));
        s.request_progress().await.expect("request_progress");
        let (rev, early) = progress(&mut s, &c).await;
        got.extend(early);
        let last_event = got.last().map(|e| e.0).unwrap_or(0);
        assert!(
            rev >= last_event && rev >= outside,
            "round {round}: progress revision {rev} < last event {last_event} or store revision \
             {outside} (watcher was caught up)\n{}",
            c.logs()
        );
        assert!(
            rev >= bookmark,
            "progress revision went back: {bookmark} -> {rev}"
        );
        // Nothing at or below a bookmark may arrive after it.
        let later = only_events(collect_after(&mut s, &c, &mut w, round).await);
        assert!(
            later.iter().all(|e| e.0 > rev),
            "round {round}: event at or below progress revision {rev} arrived after it: {later:?}"
        );
        got.extend(later);
        bookmark = rev;
    }
    assert_eq!(got, w.expected, "events differ from writes\n{}", c.logs());
}

/// Writes one more key under the prefix and collects up to its event.
async fn collect_after(
    s: &mut WatchStream,
    c: &StoreCluster,
    w: &mut Writer,
    round: usize,
) -> Vec<(usize, Ev)> {
    let rev = w.put(&format!("p/after{round}"), "a").await;
    collect(s, c, rev).await
}

async fn watch_at_compacted_revision_is_canceled(kind: StoreKind) {
    let c = start(kind, 1, ClusterOpts::default()).await;
    let mut client = c.client().await.unwrap();
    let mut w = Writer {
        client: client.clone(),
        expected: Vec::new(),
        last_rev: 0,
    };
    let mut revs = Vec::new();
    for i in 0..10 {
        revs.push(w.put("c/k", &i.to_string()).await);
    }
    let compacted = revs[5];
    client.compact(compacted, None).await.expect("compact");
    let mut s = client
        .watch(
            "c/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revs[1]),
            ),
        )
        .await
        .expect("watch");
    let mut canceled = None;
    for _ in 0..10 {
        let r = next(
            &mut s,
            &c,
            "cancellation of a watch at a compacted revision",
        )
        .await;
        assert!(
            r.events().is_empty(),
            "events from a compacted watch: {r:?}"
        );
        if r.canceled() {
            canceled = Some(r);
            break;
        }
    }
    let r = canceled.expect("canceled response");
    assert_eq!(
        r.compact_revision(),
        compacted,
        "compact_revision: {r:?}\n{}",
        c.logs()
    );
    // At the compacted revision itself the history is still there.
    let (mut s, _) = open(
        &mut client,
        &c,
        "c/",
        WatchOptions::new()
            .with_prefix()
            .with_start_revision(compacted),
    )
    .await;
    let got = only_events(collect(&mut s, &c, revs[9]).await);
    assert_eq!(got, w.expected[5..].to_vec());
}

async fn overlapping_watchers_see_exactly_their_events(kind: StoreKind) {
    let c = start(kind, 1, ClusterOpts::default()).await;
    let mut client = c.client().await.unwrap();
    let from = current_rev(&mut client).await + 1;
    let o = || WatchOptions::new().with_start_revision(from);
    // Separate streams...
    let (mut sa, _) = open(&mut client, &c, "ov/", o().with_prefix()).await;
    let (mut sb, _) = open(&mut client, &c, "ov/a/", o().with_prefix()).await;
    let (mut se, _) = open(&mut client, &c, "ov/c", o().with_from_key()).await;
    // ...and two watches multiplexed on one stream, told apart by watch id.
    let (mut shared, id_c) = open(&mut client, &c, "ov/a/1", o()).await;
    shared
        .watch("ov/b", Some(o().with_range("ov/d")))
        .await
        .expect("second watch");
    let r = next(&mut shared, &c, "the second created response").await;
    assert!(r.created(), "{r:?}");
    let id_d = r.watch_id();
    assert_ne!(id_c, id_d);

    let mut w = Writer {
        client: client.clone(),
        expected: Vec::new(),
        last_rev: 0,
    };
    let keys = [
        "ov/a/1", "ov/a/2", "ov/a", "ov/b", "ov/b/1", "ov/c", "ov/d", "ov/e", "zz", "a", "ov/",
    ];
    for round in 0..4 {
        for k in keys {
            w.put(k, &format!("{round}")).await;
        }
        w.txn(&[
            ("ov/a/1".into(), "t".into()),
            ("ov/c".into(), "t".into()),
            ("zz".into(), "t".into()),
        ])
        .await;
        w.del("ov/a/1").await;
        w.del("ov/b").await;
        w.del("zz").await;
    }
    let last = w.last_rev;
    let want_a = w.expected_for(|k| k.starts_with("ov/"));
    let want_b = w.expected_for(|k| k.starts_with("ov/a/"));
    let want_e = w.expected_for(|k| k >= "ov/c");
    let want_c = w.expected_for(|k| k == "ov/a/1");
    let want_d = w.expected_for(|k| ("ov/b".."ov/d").contains(&k));

    let got_a = only_events(collect(&mut sa, &c, want_a.last().unwrap().0).await);
    let got_b = only_events(collect(&mut sb, &c, want_b.last().unwrap().0).await);
    let got_e = only_events(collect(&mut se, &c, want_e.last().unwrap().0).await);
    let mut by_id: HashMap<i64, Vec<Ev>> = HashMap::new();
    let targets = [
        (id_c, want_c.last().unwrap().0),
        (id_d, want_d.last().unwrap().0),
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while targets.iter().any(|(id, r)| {
        by_id
            .get(id)
            .and_then(|v| v.last())
            .map(|e| e.0)
            .unwrap_or(0)
            < *r
    }) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "shared stream incomplete: {by_id:?}"
        );
        let r = next(&mut shared, &c, "events on the shared stream").await;
        assert!(!r.canceled(), "{r:?}");
        by_id.entry(r.watch_id()).or_default().extend(evs(&r));
    }
    assert_eq!(got_a, want_a, "prefix ov/");
    assert_eq!(got_b, want_b, "prefix ov/a/");
    assert_eq!(got_e, want_e, "from key ov/c");
    assert_eq!(
        by_id.remove(&id_c).unwrap_or_default(),
        want_c,
        "key ov/a/1 (shared stream)"
    );
    assert_eq!(
        by_id.remove(&id_d).unwrap_or_default(),
        want_d,
        "range [ov/b, ov/d) (shared stream)"
    );
    assert!(by_id.is_empty(), "events for unknown watch ids: {by_id:?}");
    // No stray events after the last write on any stream.
    for (s, name) in [
        (&mut sa, "ov/"),
        (&mut sb, "ov/a/"),
        (&mut se, "ov/c+"),
        (&mut shared, "shared"),
    ] {
        if let Ok(Ok(Some(r))) = tokio::time::timeout(Duration::from_millis(300), s.message()).await
        {
            panic!("{name}: unexpected response after revision {last}: {r:?}");
        }
    }
}
