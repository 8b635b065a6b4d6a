//! The watch cache against real stores (etcd and kelson-kv; build kelson-kv first:
//! `cargo build -p kelson-kv`): ring eviction → 410, consistent reads wait for the store's
//! revision, fan-out of one store watch to many client watches (with filter transitions), and
//! a watch that keeps every event in order across a store compaction.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use futures::stream::BoxStream;
use futures::StreamExt;
use kelson_apistorage::cache::{EventType, ViewFn};
use kelson_apistorage::{
    CacheWatchEvent, ListOptions, Preconditions, Storage, StorageError, WatchCache, WatchStart,
};
use kelson_testsupport::{ClusterOpts, StoreCluster, StoreKind};
use serde_json::{json, Value};

#[macro_use]
mod common;
use common::{key, rv};

both!(
    ring_eviction_is_410,
    consistent_read_waits_for_the_store_revision,
    fan_out_to_many_watchers,
    every_event_in_order_across_a_compaction,
    own_writes_and_versioned_gets,
);

const T: Duration = Duration::from_secs(10);

async fn setup(kind: StoreKind) -> Result<(StoreCluster, Storage)> {
    setup_with(kind, Duration::from_millis(200)).await
}

/// `progress`: how often the cache asks the store for progress on its own.
async fn setup_with(kind: StoreKind, progress: Duration) -> Result<(StoreCluster, Storage)> {
    common::start(kind, ClusterOpts::default(), progress).await
}

/// Labels only: what the API server's view keeps for a kind without field labels.
fn view() -> ViewFn {
    Arc::new(
        |o: &Value| json!({"metadata": {"name": o["metadata"]["name"], "labels": o["metadata"]["labels"]}}),
    )
}

fn pod(name: &str, app: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "ns", "labels": {"app": app}},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
}

async fn started(s: &Storage, capacity: usize) -> Result<WatchCache> {
    let c = WatchCache::start(s, "/registry/pods", view(), capacity)?;
    ensure!(
        c.wait_for(1, T).await,
        "the cache did not finish its initial list"
    );
    Ok(c)
}

async fn next(w: &mut BoxStream<'static, CacheWatchEvent>) -> Result<CacheWatchEvent> {
    tokio::time::timeout(T, w.next())
        .await
        .context("no watch event within the timeout")?
        .ok_or_else(|| anyhow!("the watch ended"))
}

/// The next object event (bookmarks skipped): type, name, resourceVersion.
async fn next_obj(w: &mut BoxStream<'static, CacheWatchEvent>) -> Result<(EventType, String, i64)> {
    for _ in 0..100 {
        match next(w).await? {
            CacheWatchEvent::Object { ty, obj, frame } => {
                let v = obj.value()?;
                let line: Value = serde_json::from_slice(&frame)?;
                ensure!(line["type"] == ty.as_str(), "frame {line} for {ty:?}");
                ensure!(line["object"] == v, "frame object differs");
                ensure!(rv(&v) == obj.rev, "rv {} vs {}", rv(&v), obj.rev);
                return Ok((
                    ty,
                    v["metadata"]["name"].as_str().unwrap_or("").into(),
                    obj.rev,
                ));
            }
            CacheWatchEvent::Bookmark(_) => continue,
            CacheWatchEvent::Error(e) => bail!("watch error: {e}"),
        }
    }
    bail!("only bookmarks")
}

async fn ring_eviction_is_410(kind: StoreKind) -> Result<()> {
    let (_c, s) = setup(kind).await?;
    let cache = started(&s, 4).await?;
    let first = s.create(&key("p0"), pod("p0", "a"), false).await?;
    // A slow watcher: opened now, read only after the ring moved on.
    let (_, mut slow) = cache
        .watch(
            "/registry/pods",
            true,
            WatchStart::After(rv(&first)),
            None,
            false,
            T,
        )
        .await?;
    let mut last = first.clone();
    for i in 1..10 {
        last = s
            .create(&key(&format!("p{i}")), pod(&format!("p{i}"), "a"), false)
            .await?;
    }
    ensure!(cache.wait_for(rv(&last), T).await, "cache did not catch up");
    // The cache's revision can run ahead of its events: etcd before 3.4.25 (Debian ships
    // 3.4.23) may answer a RequestProgress before events it has not sent yet (etcd-io/etcd
    // #15220), so wait, bounded, for the events themselves to push p0 out of the ring.
    let evicted = async {
        while cache.oldest_revision() <= rv(&first) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    ensure!(
        tokio::time::timeout(T, evicted).await.is_ok(),
        "ring not evicted: oldest {} <= {}",
        cache.oldest_revision(),
        rv(&first)
    );
    let e = cache
        .watch(
            "/registry/pods",
            true,
            WatchStart::After(rv(&first)),
            None,
            false,
            T,
        )
        .await
        .err()
        .context("a watch from before the ring started")?;
    ensure!(e.http_code() == 410, "{e:?}");
    ensure!(e.to_string().starts_with("too old resource version"), "{e}");
    match next(&mut slow).await? {
        CacheWatchEvent::Error(e) => ensure!(e.http_code() == 410, "{e:?}"),
        other => bail!("the overtaken watcher got {other:?}"),
    }
    ensure!(
        tokio::time::timeout(T, slow.next()).await?.is_none(),
        "stream went on"
    );
    // Within the ring it works, and starts right after the given revision.
    let from = rv(&last) - 2;
    let (_, mut w) = cache
        .watch(
            "/registry/pods",
            true,
            WatchStart::After(from),
            None,
            false,
            T,
        )
        .await?;
    let (ty, name, r) = next_obj(&mut w).await?;
    ensure!(
        ty == EventType::Added && name == "p8" && r == from + 1,
        "{ty:?} {name} {r}"
    );
    Ok(())
}

/// GET from the cache: read-your-own-writes (without waiting for writes to other resources),
/// resourceVersion "0" and N (waiting for a write made through another connection), too
/// large versions, deletion.
async fn own_writes_and_versioned_gets(kind: StoreKind) -> Result<()> {
    // No periodic progress: only reads that wait ask the store for it.
    let (c, s) = setup_with(kind, Duration::from_secs(600)).await?;
    let cache = started(&s, 100).await?;
    let p = s.create(&key("a"), pod("a", "x"), false).await?;
    let got = cache
        .get_own_writes(&key("a"))
        .await?
        .context("own writes are served from the cache")?
        .context("our own create is there at once")?;
    ensure!(got.rev == rv(&p), "rev {} vs {}", got.rev, rv(&p));

    // Writes to another resource do not hold this cache up: it waits only for our writes
    // under its own prefix, so no progress notification moves it past them.
    let mut other = 0;
    for i in 0..3 {
        let k = format!("/registry/configmaps/ns/c{i}");
        other = rv(&s.create(&k, pod("c", "x"), false).await?);
    }
    let t0 = std::time::Instant::now();
    ensure!(cache
        .get_own_writes(&key("a"))
        .await?
        .context("served")?
        .is_some());
    ensure!(
        cache.revision() < other,
        "the cache waited for writes to another resource ({} >= {other})",
        cache.revision()
    );
    ensure!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    ensure!(cache
        .get_own_writes(&key("nope"))
        .await?
        .context("served")?
        .is_none());

    // A write through another connection (another API server): GET at its version waits
    // for the cache to have it.
    let elsewhere = Storage::connect(&c.endpoints(), None).await?;
    let u = elsewhere
        .guaranteed_update(&key("a"), &Preconditions::default(), false, |mut o| {
            o["metadata"]["labels"]["app"] = json!("y");
            Ok::<_, String>(o)
        })
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let g = cache
        .get(&key("a"), &rv(&u).to_string())
        .await?
        .context("a version the store has is served from the cache")?
        .context("found")?;
    ensure!(g.rev == rv(&u), "rev {} vs {}", g.rev, rv(&u));
    ensure!(g.value()?["metadata"]["labels"]["app"] == "y");
    ensure!(rv(&g.value()?) == rv(&u), "resourceVersion in the bytes");
    let any = cache.get(&key("a"), "0").await?.context("served")?;
    ensure!(any.is_some_and(|o| o.rev == rv(&u)));
    ensure!(
        cache.get(&key("a"), "").await?.is_none(),
        "\"\" (latest) is the store's"
    );
    match cache.get(&key("a"), &(rv(&u) + 1000).to_string()).await {
        Err(StorageError::TooLargeResourceVersion { .. }) => {}
        other => bail!("expected TooLargeResourceVersion, got {other:?}"),
    }
    ensure!(cache.peek(&key("a")).map(|o| o.rev) == Some(rv(&u)));

    s.delete(&key("a"), &Preconditions::default(), false, |_| {
        Ok::<_, String>(())
    })
    .await
    .map_err(|e| anyhow!("{e}"))?;
    ensure!(
        cache
            .get_own_writes(&key("a"))
            .await?
            .context("served")?
            .is_none(),
        "our own delete is seen at once"
    );
    Ok(())
}

async fn consistent_read_waits_for_the_store_revision(kind: StoreKind) -> Result<()> {
    // No periodic progress: only the consistent read's own request can move the cache.
    let (_c, s) = setup_with(kind, Duration::from_secs(600)).await?;
    let cache = started(&s, 100).await?;
    // Writes elsewhere advance the store but bring the cache no event: the consistent read
    // must still report (at least) the store's revision, via a progress notification.
    let mut other = 0;
    for i in 0..3 {
        other = rv(&s
            .create(
                &format!("/registry/configmaps/ns/c{i}"),
                pod("c", "x"),
                false,
            )
            .await?);
    }
    let before = cache.revision();
    ensure!(before < other, "cache {before} already at {other}?");
    // Only a store that answers RequestProgress after the events it covers can vouch for the
    // cache's freshness: kelson-kv does; etcd before 3.4.31/3.5.13 (Debian ships 3.4.23) may
    // not (etcd-io/etcd#15220), and then consistent lists go to the store, as upstream.
    let ordered = s.progress_is_ordered().await;
    if matches!(kind, StoreKind::Kelson) {
        ensure!(ordered, "kelson-kv reports a version with ordered progress");
    }
    if !ordered {
        for i in 0..5 {
            s.create(&key(&format!("r{i}")), pod(&format!("r{i}"), "a"), false)
                .await?;
            ensure!(
                cache
                    .list("/registry/pods/ns", &ListOptions::default(), None)
                    .await?
                    .is_none(),
                "a consistent list is read from the store"
            );
        }
    } else {
        let l = cache
            .list("/registry/pods/ns", &ListOptions::default(), None)
            .await?
            .context("a consistent list must be served from the cache")?;
        ensure!(
            l.resource_version >= other,
            "list at {} < store {other}",
            l.resource_version
        );
        // Read your writes: a create followed at once by a consistent list sees the object.
        for i in 0..5 {
            let o = s
                .create(&key(&format!("r{i}")), pod(&format!("r{i}"), "a"), false)
                .await?;
            let l = cache
                .list("/registry/pods/ns", &ListOptions::default(), None)
                .await?
                .context("served from the cache")?;
            ensure!(l.resource_version >= rv(&o));
            ensure!(
                l.items.len() == i + 1,
                "{} items after {} creates",
                l.items.len(),
                i + 1
            );
        }
    }
    // resourceVersion far in the future: 504 Too large resource version, as upstream.
    let opts = ListOptions {
        resource_version: Some((other + 1000).to_string()),
        ..Default::default()
    };
    match cache.list("/registry/pods/ns", &opts, None).await {
        Err(StorageError::TooLargeResourceVersion { .. }) => {}
        other => bail!("expected TooLargeResourceVersion, got {other:?}"),
    }
    if !ordered {
        // Paging starts with a consistent list, which such a store serves itself.
        return Ok(());
    }
    // Pages: limit 2 over 5 objects, continue tokens walk all (served from the cache while
    // nothing changes, from the store at the token's revision afterwards).
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    for round in 0..5 {
        let opts = ListOptions {
            limit: 2,
            continue_token: token.clone(),
            ..Default::default()
        };
        let page = match cache.list("/registry/pods/ns", &opts, None).await? {
            Some(p) => p,
            None => bail!("page {round} not served from the cache while nothing changed"),
        };
        names.extend(page.items.iter().map(|o| o.key.clone()));
        if round == 0 {
            ensure!(
                page.remaining_item_count == Some(3),
                "{:?}",
                page.remaining_item_count
            );
        }
        token = page.continue_token;
        if token.is_none() {
            break;
        }
    }
    ensure!(names.len() == 5, "{names:?}");
    let opts = ListOptions {
        limit: 2,
        ..Default::default()
    };
    let p1 = cache
        .list("/registry/pods/ns", &opts, None)
        .await?
        .context("page 1")?;
    s.create(&key("z"), pod("z", "a"), false).await?;
    ensure!(cache.wait_fresh(T).await?, "cache did not catch up");
    let opts = ListOptions {
        limit: 2,
        continue_token: p1.continue_token.clone(),
        ..Default::default()
    };
    ensure!(
        cache
            .list("/registry/pods/ns", &opts, None)
            .await?
            .is_none(),
        "a continue token from before a change must be served by the store"
    );
    let p2 = s.list("/registry/pods/ns", &opts, None).await?;
    ensure!(p2.resource_version == p1.resource_version && p2.items.len() == 2);
    Ok(())
}

async fn fan_out_to_many_watchers(kind: StoreKind) -> Result<()> {
    let (_c, s) = setup(kind).await?;
    let cache = started(&s, 1000).await?;
    let from = s.current_revision().await?;
    let mut all = Vec::new();
    for _ in 0..50 {
        all.push(
            cache
                .watch(
                    "/registry/pods",
                    true,
                    WatchStart::After(from),
                    None,
                    false,
                    T,
                )
                .await?
                .1,
        );
    }
    let only_b: kelson_apistorage::cache::ViewFilter =
        Some(Arc::new(|v: &Value| v["metadata"]["labels"]["app"] == "b"));
    let (_, mut filtered) = cache
        .watch(
            "/registry/pods/ns/",
            true,
            WatchStart::After(from),
            only_b,
            false,
            T,
        )
        .await?;
    s.create(&key("x"), pod("x", "a"), false).await?;
    let relabel = |app: &'static str| {
        move |mut o: Value| {
            o["metadata"]["labels"]["app"] = json!(app);
            Ok::<_, String>(o)
        }
    };
    let p = Preconditions::default();
    s.guaranteed_update(&key("x"), &p, false, relabel("b"))
        .await
        .map_err(|e| anyhow!("{e}"))?;
    s.guaranteed_update(&key("x"), &p, false, relabel("c"))
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let del = s
        .delete(&key("x"), &p, false, |_| Ok::<_, String>(()))
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let want = [
        EventType::Added,
        EventType::Modified,
        EventType::Modified,
        EventType::Deleted,
    ];
    for w in all.iter_mut() {
        let mut last = 0;
        for ty in want {
            let (got, name, r) = next_obj(w).await?;
            ensure!(got == ty && name == "x" && r > last, "{got:?} {name} {r}");
            last = r;
        }
        ensure!(
            last == rv(&del),
            "DELETED at {last}, deletion at {}",
            rv(&del)
        );
    }
    // The filtered watch sees the transitions: ADDED when it starts matching, DELETED (the
    // previous object, at the event's revision) when it stops.
    let (ty, _, _) = next_obj(&mut filtered).await?;
    ensure!(ty == EventType::Added, "{ty:?}");
    match next(&mut filtered).await? {
        CacheWatchEvent::Object { ty, obj, .. } => {
            ensure!(ty == EventType::Deleted, "{ty:?}");
            ensure!(
                obj.value()?["metadata"]["labels"]["app"] == "b",
                "previous object expected"
            );
        }
        other => bail!("{other:?}"),
    }
    ensure!(
        tokio::time::timeout(Duration::from_millis(500), filtered.next())
            .await
            .is_err(),
        "the filtered watch saw the deletion of an object it no longer matched"
    );
    Ok(())
}

async fn every_event_in_order_across_a_compaction(kind: StoreKind) -> Result<()> {
    let (_c, s) = setup(kind).await?;
    let cache = started(&s, 10_000).await?;
    let from = s.current_revision().await?;
    let (_, mut w) = cache
        .watch(
            "/registry/pods",
            true,
            WatchStart::After(from),
            None,
            true,
            Duration::from_millis(200),
        )
        .await?;
    let mut expected = Vec::new();
    let p = Preconditions::default();
    for round in 0..3 {
        for i in 0..5 {
            let n = format!("r{round}-{i}");
            let o = s.create(&key(&n), pod(&n, "a"), false).await?;
            expected.push((EventType::Added, n.clone(), rv(&o)));
            let o = s
                .guaranteed_update(&key(&n), &p, false, |mut o| {
                    o["spec"]["x"] = json!(1);
                    Ok::<_, String>(o)
                })
                .await
                .map_err(|e| anyhow!("{e}"))?;
            expected.push((EventType::Modified, n.clone(), rv(&o)));
            if i % 2 == 0 {
                let o = s
                    .delete(&key(&n), &p, false, |_| Ok::<_, String>(()))
                    .await
                    .map_err(|e| anyhow!("{e}"))?;
                expected.push((EventType::Deleted, n, rv(&o)));
            }
        }
        // Compact everything so far: the established store watch (and so the cache) goes on.
        s.compact(s.current_revision().await?).await?;
    }
    for want in &expected {
        let got = next_obj(&mut w).await?;
        ensure!(&got == want, "got {got:?}, want {want:?}");
    }
    // The cache holds the final state (its watcher saw every event); its list agrees with the
    // store's. resourceVersion "0": a consistent list goes to the store itself on stores whose
    // progress notifications are not ordered (Debian's etcd 3.4.23).
    let any = ListOptions {
        resource_version: Some("0".into()),
        ..Default::default()
    };
    let l = cache
        .list("/registry/pods", &any, None)
        .await?
        .context("cached")?;
    let direct = s
        .list("/registry/pods", &ListOptions::default(), None)
        .await?;
    ensure!(
        l.items.len() == direct.items.len() && l.items.len() == 6,
        "{} vs {}",
        l.items.len(),
        direct.items.len()
    );
    for (a, b) in l.items.iter().zip(&direct.items) {
        ensure!(a.value()? == *b, "cached object differs from the store's");
    }
    // A new watch from before the compaction: 410, even though the ring still has it.
    let e = cache
        .watch(
            "/registry/pods",
            true,
            WatchStart::After(from),
            None,
            false,
            T,
        )
        .await
        .err()
        .context("a watch from a compacted revision")?;
    ensure!(e.http_code() == 410, "{e:?}");
    Ok(())
}
