//! Storage semantics against real stores: every scenario runs once against the real etcd
//! (`/usr/bin/etcd`) and once against kelson-kv (build it first: `cargo build -p kelson-kv`),
//! each on its own single-member cluster on loopback ports in a temp dir.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use futures::stream::BoxStream;
use futures::StreamExt;
use kelson_apistorage::{
    decode_continue, EtcdTls, ListOptions, Preconditions, ResourceVersionMatch, Storage,
    StorageConfig, StorageError, UpdateError, UpdateOptions, WatchEvent, WatchFilter,
};
use kelson_testsupport::{ClusterOpts, StoreCluster, StoreKind};
use serde_json::{json, Value};

#[macro_use]
mod common;
use common::{key, rv};

both!(
    create_and_get,
    list_paging_and_filter,
    list_resource_version_semantics,
    continue_after_compaction_is_410_with_fresh_token,
    concurrent_updates_lose_nothing,
    stale_cached_object_is_retried,
    noop_update_writes_nothing,
    preconditions_and_callback_errors,
    delete_returns_the_deleted_object,
    dry_run_never_writes,
    watch_added_modified_deleted,
    filtered_watch_transitions,
    watch_from_old_revision_replays,
    compacted_watch_is_410_event,
    watch_bookmarks,
    tls_connection,
    lost_answers_are_resolved,
);

const T: Duration = Duration::from_secs(5);

async fn setup(kind: StoreKind) -> Result<(StoreCluster, Storage)> {
    setup_with(kind, ClusterOpts::default()).await
}

async fn setup_with(kind: StoreKind, opts: ClusterOpts) -> Result<(StoreCluster, Storage)> {
    common::start(kind, opts, Duration::from_millis(200)).await
}

fn pod(name: &str, app: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"),
                     "labels": {"app": app}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    })
}

fn names(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn storage_err<E: std::fmt::Debug>(e: UpdateError<E>) -> Result<StorageError> {
    match e {
        UpdateError::Storage(s) => Ok(s),
        UpdateError::Rejected(r) => bail!("expected a storage error, got rejection {r:?}"),
    }
}

/// Next watch event, bounded by `T`.
async fn next(w: &mut BoxStream<'static, WatchEvent>) -> Result<WatchEvent> {
    tokio::time::timeout(T, w.next())
        .await
        .map_err(|_| anyhow!("no watch event within {T:?}"))?
        .ok_or_else(|| anyhow!("watch ended"))
}

/// Next non-bookmark event.
async fn next_change(w: &mut BoxStream<'static, WatchEvent>) -> Result<WatchEvent> {
    for _ in 0..100 {
        match next(w).await? {
            WatchEvent::Bookmark(_) => continue,
            e => return Ok(e),
        }
    }
    bail!("only bookmarks")
}

async fn create_and_get(kind: StoreKind) -> Result<()> {
    let (cluster, s) = setup(kind).await?;
    let created = s.create(&key("a"), pod("a", "x"), false).await?;
    let r = rv(&created);
    ensure!(r > 0 && r == s.current_revision().await?, "rv {r}");
    // Stored without resourceVersion.
    let mut raw = cluster.client().await?;
    let stored = raw.get(key("a"), None).await?;
    let stored: Value = serde_json::from_slice(stored.kvs()[0].value())?;
    ensure!(
        stored["metadata"].get("resourceVersion").is_none(),
        "{stored}"
    );
    ensure!(stored["metadata"]["name"] == "a");

    let e = s.create(&key("a"), pod("a", "x"), false).await.unwrap_err();
    ensure!(matches!(e, StorageError::AlreadyExists { .. }), "{e:?}");
    ensure!(e.http_code() == 409);

    let mut with_rv = pod("b", "x");
    with_rv["metadata"]["resourceVersion"] = json!("5");
    let e = s.create(&key("b"), with_rv, false).await.unwrap_err();
    ensure!(e == StorageError::ResourceVersionSetOnCreate, "{e:?}");

    let got = s.get(&key("a"), None).await?;
    ensure!(got == created, "{got} != {created}");
    let got0 = s.get(&key("a"), Some("0")).await?;
    ensure!(rv(&got0) == r);
    ensure!(s.get(&key("a"), Some(&r.to_string())).await? == created);

    let e = s.get(&key("missing"), None).await.unwrap_err();
    ensure!(matches!(e, StorageError::NotFound { .. }) && e.http_code() == 404);
    let e = s
        .get(&key("a"), Some(&(r + 100).to_string()))
        .await
        .unwrap_err();
    ensure!(
        e == StorageError::TooLargeResourceVersion {
            requested: (r + 100) as u64,
            current: r as u64
        },
        "{e:?}"
    );
    let e = s.get(&key("a"), Some("abc")).await.unwrap_err();
    ensure!(e.http_code() == 400, "{e:?}");
    let e = s.get("/registry/../etc", None).await.unwrap_err();
    ensure!(e.http_code() == 400, "{e:?}");
    Ok(())
}

async fn list_paging_and_filter(kind: StoreKind) -> Result<()> {
    let (_c, s) = setup(kind).await?;
    for (i, n) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        let app = if i % 2 == 0 { "even" } else { "odd" };
        s.create(&key(n), pod(n, app), false).await?;
    }
    // A sibling prefix that a naive prefix range would include.
    s.create("/registry/podsx/ns/zz", pod("zz", "even"), false)
        .await?;
    let list_rev = s.current_revision().await?;

    let all = s
        .list("/registry/pods", &ListOptions::default(), None)
        .await?;
    ensure!(
        names(&all.items) == ["a", "b", "c", "d", "e"],
        "{:?}",
        names(&all.items)
    );
    ensure!(all.resource_version == list_rev);
    ensure!(all.continue_token.is_none() && all.remaining_item_count.is_none());

    let mut opts = ListOptions {
        limit: 2,
        ..ListOptions::default()
    };
    let p1 = s.list("/registry/pods/", &opts, None).await?;
    ensure!(names(&p1.items) == ["a", "b"]);
    ensure!(p1.resource_version == list_rev);
    ensure!(
        p1.remaining_item_count == Some(3),
        "{:?}",
        p1.remaining_item_count
    );
    let tok = p1.continue_token.clone().context("no continue token")?;
    let (start, trv) = decode_continue(&tok, "/registry/pods/")?;
    ensure!(
        start == "/registry/pods/ns/b\0" && trv == list_rev,
        "{start:?} {trv}"
    );

    // Writes after the first page are invisible to the rest of this list.
    s.create(&key("bb"), pod("bb", "odd"), false).await?;
    opts.continue_token = Some(tok);
    let p2 = s.list("/registry/pods/", &opts, None).await?;
    ensure!(names(&p2.items) == ["c", "d"], "{:?}", names(&p2.items));
    ensure!(p2.resource_version == list_rev);
    ensure!(p2.remaining_item_count == Some(1));
    opts.continue_token = p2.continue_token.clone();
    let p3 = s.list("/registry/pods/", &opts, None).await?;
    ensure!(names(&p3.items) == ["e"]);
    ensure!(p3.continue_token.is_none() && p3.remaining_item_count.is_none());

    // Filtered: pages keep filling until `limit` matches; no remaining count.
    let even = |o: &Value| o["metadata"]["labels"]["app"] == "even";
    let opts = ListOptions {
        limit: 2,
        ..ListOptions::default()
    };
    let f1 = s.list("/registry/pods/", &opts, Some(&even)).await?;
    ensure!(names(&f1.items) == ["a", "c"], "{:?}", names(&f1.items));
    ensure!(f1.remaining_item_count.is_none());
    let opts = ListOptions {
        continue_token: f1.continue_token.clone(),
        ..opts
    };
    ensure!(opts.continue_token.is_some());
    let f2 = s.list("/registry/pods/", &opts, Some(&even)).await?;
    ensure!(names(&f2.items) == ["e"], "{:?}", names(&f2.items));
    ensure!(f2.continue_token.is_none());

    let bad = ListOptions {
        continue_token: Some("garbage!".into()),
        ..ListOptions::default()
    };
    let e = s.list("/registry/pods/", &bad, None).await.unwrap_err();
    ensure!(e.http_code() == 400, "{e:?}");
    Ok(())
}

async fn list_resource_version_semantics(kind: StoreKind) -> Result<()> {
    let (_c, s) = setup(kind).await?;
    let a = s.create(&key("a"), pod("a", "x"), false).await?;
    let r1 = rv(&a);
    s.create(&key("b"), pod("b", "x"), false).await?;
    let r2 = s.current_revision().await?;

    let exact = |rv: i64| ListOptions {
        resource_version: Some(rv.to_string()),
        resource_version_match: Some(ResourceVersionMatch::Exact),
        ..ListOptions::default()
    };
    let l = s.list("/registry/pods/", &exact(r1), None).await?;
    ensure!(names(&l.items) == ["a"] && l.resource_version == r1);
    // Legacy: a paged list at a resourceVersion reads exactly there.
    let legacy = ListOptions {
        resource_version: Some(r1.to_string()),
        limit: 10,
        ..ListOptions::default()
    };
    let l = s.list("/registry/pods/", &legacy, None).await?;
    ensure!(names(&l.items) == ["a"] && l.resource_version == r1);
    // NotOlderThan: latest, as long as it is at least that.
    let not_older = ListOptions {
        resource_version: Some(r1.to_string()),
        resource_version_match: Some(ResourceVersionMatch::NotOlderThan),
        ..ListOptions::default()
    };
    let l = s.list("/registry/pods/", &not_older, None).await?;
    ensure!(names(&l.items) == ["a", "b"] && l.resource_version == r2);
    let too_new = ListOptions {
        resource_version: Some((r2 + 50).to_string()),
        ..not_older.clone()
    };
    let e = s.list("/registry/pods/", &too_new, None).await.unwrap_err();
    ensure!(
        matches!(e, StorageError::TooLargeResourceVersion { .. }),
        "{e:?}"
    );
    ensure!(e.http_code() == 504);
    // "0": any version (served by a serializable read here).
    let any = ListOptions {
        resource_version: Some("0".into()),
        ..ListOptions::default()
    };
    let l = s.list("/registry/pods/", &any, None).await?;
    ensure!(l.items.len() == 2 && l.resource_version >= r2);
    let bad = ListOptions {
        resource_version: Some("0".into()),
        resource_version_match: Some(ResourceVersionMatch::Exact),
        ..ListOptions::default()
    };
    ensure!(
        s.list("/registry/pods/", &bad, None)
            .await
            .unwrap_err()
            .http_code()
            == 400
    );

    // Exact at a compacted revision: 410 with upstream's message.
    s.guaranteed_update(&key("a"), &Preconditions::default(), false, |mut o| {
        o["spec"]["x"] = json!(1);
        Ok::<_, String>(o)
    })
    .await
    .map_err(|e| anyhow!("{e}"))?;
    s.compact(s.current_revision().await?).await?;
    let e = s
        .list("/registry/pods/", &exact(r1), None)
        .await
        .unwrap_err();
    ensure!(
        e == StorageError::Expired {
            message: "The resourceVersion for the provided list is too old.".into(),
            continue_token: None
        },
        "{e:?}"
    );
    ensure!(e.http_code() == 410);
    Ok(())
}

async fn continue_after_compaction_is_410_with_fresh_token(kind: StoreKind) -> Result<()> {
    let (_c, s) = setup(kind).await?;
    for n in ["a", "b", "c", "d"] {
        s.create(&key(n), pod(n, "x"), false).await?;
    }
    let opts = ListOptions {
        limit: 2,
        ..ListOptions::default()
    };
    let p1 = s.list("/registry/pods/", &opts, None).await?;
    ensure!(names(&p1.items) == ["a", "b"]);
    // Move on and compact past the list's revision.
    s.create(&key("e"), pod("e", "x"), false).await?;
    s.compact(s.current_revision().await?).await?;

    let cont = ListOptions {
        continue_token: p1.continue_token.clone(),
        ..opts.clone()
    };
    let e = s.list("/registry/pods/", &cont, None).await.unwrap_err();
    ensure!(e.http_code() == 410 && e.reason() == "Expired", "{e:?}");
    ensure!(
        e.to_string().starts_with(
            "The provided continue parameter is too old to display a consistent list result. \
             You can start a new list without the continue parameter, or use the continue token \
             in this response to retrieve the remainder of the results."
        ),
        "{e}"
    );
    let fresh = e.continue_token().context("no fresh continue token")?;
    let (start, trv) = decode_continue(fresh, "/registry/pods/")?;
    ensure!(
        start == "/registry/pods/ns/b\0" && trv == -1,
        "{start:?} {trv}"
    );
    // The fresh token continues at the latest revision (which now includes "e").
    let cont = ListOptions {
        continue_token: Some(fresh.to_string()),
        limit: 10,
        ..ListOptions::default()
    };
    let rest = s.list("/registry/pods/", &cont, None).await?;
    ensure!(
        names(&rest.items) == ["c", "d", "e"],
        "{:?}",
        names(&rest.items)
    );
    ensure!(rest.resource_version == s.current_revision().await?);
    Ok(())
}

async fn concurrent_updates_lose_nothing(kind: StoreKind) -> Result<()> {
    let (_c, s) = setup(kind).await?;
    let mut o = pod("counter", "x");
    o["spec"]["n"] = json!(0);
    s.create(&key("counter"), o, false).await?;
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let s = s.clone();
        let calls = calls.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..15 {
                s.guaranteed_update(
                    &key("counter"),
                    &Preconditions::default(),
                    false,
                    |mut o: Value| {
                        calls.fetch_add(1, Ordering::SeqCst);
                        let n = o["spec"]["n"].as_i64().unwrap_or(-1000);
                        o["spec"]["n"] = json!(n + 1);
                        Ok::<_, String>(o)
                    },
                )
                .await
                .map_err(|e| anyhow!("{e}"))?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t).await???;
    }
    let got = s.get(&key("counter"), None).await?;
    ensure!(got["spec"]["n"] == 30, "lost updates: {}", got["spec"]["n"]);
    ensure!(calls.load(Ordering::SeqCst) >= 30);
    Ok(())
}

async fn stale_cached_object_is_retried(kind: StoreKind) -> Result<()> {
    let (_c, s) = setup(kind).await?;
    let mut o = pod("a", "x");
    o["spec"]["n"] = json!(0);
    let stale = s.create(&key("a"), o, false).await?;
    // Someone else updates behind our cached copy.
    s.guaranteed_update(&key("a"), &Preconditions::default(), false, |mut o| {
        o["spec"]["n"] = json!(10);
        Ok::<_, String>(o)
    })
    .await
    .map_err(|e| anyhow!("{e}"))?;
    let mut seen = Vec::new();
    let out = s
        .guaranteed_update_with(
            &key("a"),
            UpdateOptions {
                cached: Some(stale),
                ..UpdateOptions::default()
            },
            |cur: Option<Value>| {
                let mut o = cur.ok_or("missing")?;
                seen.push(o["spec"]["n"].as_i64().unwrap_or(-1));
                o["spec"]["n"] = json!(o["spec"]["n"].as_i64().unwrap_or(0) + 1);
                Ok::<_, &str>(o)
            },
        )
        .await
        .map_err(|e| anyhow!("{e}"))?;
    // First pass on the stale copy (0) conflicts; the retry uses the Else(Get) copy (10).
    ensure!(seen == [0, 10], "{seen:?}");
    ensure!(out["spec"]["n"] == 11);
    ensure!(rv(&out) == s.current_revision().await?);

    // Update-create: a missing key with ignore_not_found.
    let created = s
        .guaranteed_update_with(
            &key("new"),
            UpdateOptions {
                ignore_not_found: true,
                ..UpdateOptions::default()
            },
            |cur: Option<Value>| match cur {
                None => Ok(pod("new", "x")),
                Some(_) => Err("exists"),
            },
        )
        .await
        .map_err(|e| anyhow!("{e}"))?;
    ensure!(rv(&created) == s.current_revision().await?);
    let e = s
        .guaranteed_update(&key("nope"), &Preconditions::default(), false, |o| {
            Ok::<_, String>(o)
        })
        .await
        .unwrap_err();
    ensure!(matches!(storage_err(e)?, StorageError::NotFound { .. }));
    Ok(())
}

async fn noop_update_writes_nothing(kind: StoreKind) -> Result<()> {
    let (_c, s) = setup(kind).await?;
    let created = s.create(&key("a"), pod("a", "x"), false).await?;
    let before = s.current_revision().await?;
    // Returning the object unchanged — even with a different resourceVersion — is no write.
    let out = s
        .guaranteed_update(&key("a"), &Preconditions::default(), false, |mut o| {
            o["metadata"]["resourceVersion"] = json!("1");
            Ok::<_, String>(o)
        })
        .await
        .map_err(|e| anyhow!("{e}"))?;
    ensure!(
        s.current_revision().await? == before,
        "a no-op update wrote"
    );
    ensure!(out == created, "{out} != {created}");
    // A real change writes once.
    let out = s
        .guaranteed_update(&key("a"), &Preconditions::default(), false, |mut o| {
            o["metadata"]["labels"]["app"] = json!("y");
            Ok::<_, String>(o)
        })
        .await
        .map_err(|e| anyhow!("{e}"))?;
    ensure!(s.current_revision().await? == before + 1);
    ensure!(rv(&out) == before + 1 && out["metadata"]["labels"]["app"] == "y");
    Ok(())
}

async fn preconditions_and_callback_errors(kind: StoreKind) -> Result<()> {
    let (_c, s) = setup(kind).await?;
    let created = s.create(&key("a"), pod("a", "x"), false).await?;
    let r = rv(&created);
    let touch = |mut o: Value| {
        o["spec"]["touched"] = json!(true);
        Ok::<_, String>(o)
    };
    let bad_uid = Preconditions {
        uid: Some("other".into()),
        resource_version: None,
    };
    let e = storage_err(
        s.guaranteed_update(&key("a"), &bad_uid, false, touch)
            .await
            .unwrap_err(),
    )?;
    ensure!(
        e == StorageError::Conflict {
            key: key("a"),
            message: "Precondition failed: UID in precondition: other, UID in object meta: uid-a"
                .into()
        },
        "{e:?}"
    );
    let bad_rv = Preconditions {
        uid: None,
        resource_version: Some("1".into()),
    };
    let e = storage_err(
        s.guaranteed_update(&key("a"), &bad_rv, false, touch)
            .await
            .unwrap_err(),
    )?;
    ensure!(
        e.to_string()
            == format!(
                "Precondition failed: ResourceVersion in precondition: 1, ResourceVersion in object meta: {r}"
            ),
        "{e}"
    );
    ensure!(
        s.current_revision().await? == r,
        "a failed precondition wrote"
    );
    let good = Preconditions {
        uid: Some("uid-a".into()),
        resource_version: Some(r.to_string()),
    };
    let out = s
        .guaranteed_update(&key("a"), &good, false, touch)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    ensure!(out["spec"]["touched"] == true);

    // The callback's own error comes back untouched, and nothing is written.
    let rev = s.current_revision().await?;
    let e = s
        .guaranteed_update(&key("a"), &Preconditions::default(), false, |_| {
            Err::<Value, _>("invalid: spec is wrong")
        })
        .await
        .unwrap_err();
    ensure!(
        e == UpdateError::Rejected("invalid: spec is wrong"),
        "{e:?}"
    );
    let e = s
        .delete(&key("a"), &bad_uid, false, |_| Ok::<_, String>(()))
        .await
        .unwrap_err();
    ensure!(storage_err(e)?.http_code() == 409);
    ensure!(s.current_revision().await? == rev);
    Ok(())
}

async fn delete_returns_the_deleted_object(kind: StoreKind) -> Result<()> {
    let (_c, s) = setup(kind).await?;
    let created = s.create(&key("a"), pod("a", "x"), false).await?;
    let e = s
        .delete(&key("a"), &Preconditions::default(), false, |o: &Value| {
            if o["metadata"]["name"] == "a" {
                Err("has finalizers")
            } else {
                Ok(())
            }
        })
        .await
        .unwrap_err();
    ensure!(e == UpdateError::Rejected("has finalizers"));
    ensure!(
        s.get(&key("a"), None).await.is_ok(),
        "rejected delete deleted"
    );

    let pre = Preconditions {
        uid: Some("uid-a".into()),
        resource_version: Some(rv(&created).to_string()),
    };
    let deleted = s
        .delete(&key("a"), &pre, false, |_| Ok::<_, String>(()))
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let del_rev = s.current_revision().await?;
    ensure!(rv(&deleted) == del_rev && del_rev > rv(&created));
    ensure!(deleted["metadata"]["name"] == "a" && deleted["spec"] == created["spec"]);
    ensure!(matches!(
        s.get(&key("a"), None).await.unwrap_err(),
        StorageError::NotFound { .. }
    ));
    let e = s
        .delete(&key("a"), &Preconditions::default(), false, |_| {
            Ok::<_, String>(())
        })
        .await
        .unwrap_err();
    ensure!(matches!(storage_err(e)?, StorageError::NotFound { .. }));
    Ok(())
}

async fn dry_run_never_writes(kind: StoreKind) -> Result<()> {
    let (_c, s) = setup(kind).await?;
    let r0 = s.current_revision().await?;
    let out = s.create(&key("a"), pod("a", "x"), true).await?;
    ensure!(out["metadata"]["name"] == "a");
    ensure!(s.current_revision().await? == r0, "dry-run create wrote");
    ensure!(s.get(&key("a"), None).await.is_err());

    let created = s.create(&key("a"), pod("a", "x"), false).await?;
    let r1 = s.current_revision().await?;
    let e = s.create(&key("a"), pod("a", "x"), true).await.unwrap_err();
    ensure!(matches!(e, StorageError::AlreadyExists { .. }));

    let out = s
        .guaranteed_update(&key("a"), &Preconditions::default(), true, |mut o| {
            o["spec"]["x"] = json!(1);
            Ok::<_, String>(o)
        })
        .await
        .map_err(|e| anyhow!("{e}"))?;
    ensure!(out["spec"]["x"] == 1);
    let bad = Preconditions {
        uid: Some("zzz".into()),
        resource_version: None,
    };
    let e = s
        .guaranteed_update(&key("a"), &bad, true, Ok::<_, String>)
        .await
        .unwrap_err();
    ensure!(storage_err(e)?.http_code() == 409);

    let out = s
        .delete(&key("a"), &Preconditions::default(), true, |_| {
            Ok::<_, String>(())
        })
        .await
        .map_err(|e| anyhow!("{e}"))?;
    ensure!(out == created);
    ensure!(s.current_revision().await? == r1, "a dry run wrote");
    ensure!(s.get(&key("a"), None).await? == created);
    Ok(())
}

async fn watch_added_modified_deleted(kind: StoreKind) -> Result<()> {
    let (_c, s) = setup(kind).await?;
    s.create(&key("before"), pod("before", "x"), false).await?;
    let mut w = s.watch("/registry/pods", true, 0, None, false).await?;
    let mut one = s.watch(&key("b"), false, 0, None, false).await?;

    let a = s.create(&key("a"), pod("a", "x"), false).await?;
    let b = s.create(&key("b"), pod("b", "x"), false).await?;
    s.create("/registry/podsx/ns/c", pod("c", "x"), false)
        .await?;
    let b2 = s
        .guaranteed_update(&key("b"), &Preconditions::default(), false, |mut o| {
            o["spec"]["n"] = json!(2);
            Ok::<_, String>(o)
        })
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let del = s
        .delete(&key("a"), &Preconditions::default(), false, |_| {
            Ok::<_, String>(())
        })
        .await
        .map_err(|e| anyhow!("{e}"))?;

    ensure!(next(&mut w).await? == WatchEvent::Added(a.clone()));
    ensure!(next(&mut w).await? == WatchEvent::Added(b.clone()));
    ensure!(next(&mut w).await? == WatchEvent::Modified(b2.clone()));
    let d = next(&mut w).await?;
    ensure!(d == WatchEvent::Deleted(del.clone()), "{d:?}");
    let WatchEvent::Deleted(dobj) = d else {
        bail!("not deleted")
    };
    ensure!(
        rv(&dobj) > rv(&a),
        "deleted object carries the delete revision"
    );

    ensure!(next(&mut one).await? == WatchEvent::Added(b));
    ensure!(next(&mut one).await? == WatchEvent::Modified(b2));
    // Nothing else arrives for the single-key watch.
    ensure!(
        tokio::time::timeout(Duration::from_millis(300), one.next())
            .await
            .is_err(),
        "unexpected event on a single-key watch"
    );
    Ok(())
}

async fn filtered_watch_transitions(kind: StoreKind) -> Result<()> {
    let (_c, s) = setup(kind).await?;
    let filter: WatchFilter = Some(Arc::new(|o: &Value| {
        o["metadata"]["labels"]["app"] == "web"
    }));
    let mut w = s.watch("/registry/pods/", true, 0, filter, false).await?;
    let set_app = |app: &'static str| {
        move |mut o: Value| {
            o["metadata"]["labels"]["app"] = json!(app);
            Ok::<_, String>(o)
        }
    };
    let none = Preconditions::default();
    // Not matching: nothing.
    s.create(&key("a"), pod("a", "db"), false).await?;
    // Starts matching: ADDED.
    let m1 = s
        .guaranteed_update(&key("a"), &none, false, set_app("web"))
        .await
        .map_err(|e| anyhow!("{e}"))?;
    // Still matching: MODIFIED.
    let m2 = s
        .guaranteed_update(&key("a"), &none, false, |mut o| {
            o["spec"]["n"] = json!(1);
            Ok::<_, String>(o)
        })
        .await
        .map_err(|e| anyhow!("{e}"))?;
    // Stops matching: DELETED with the previous content at the event's revision.
    let m3 = s
        .guaranteed_update(&key("a"), &none, false, set_app("db"))
        .await
        .map_err(|e| anyhow!("{e}"))?;
    // Deleting a non-matching object: nothing. Then a matching create: ADDED.
    s.delete(&key("a"), &none, false, |_| Ok::<_, String>(()))
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let b = s.create(&key("b"), pod("b", "web"), false).await?;

    ensure!(next(&mut w).await? == WatchEvent::Added(m1));
    ensure!(next(&mut w).await? == WatchEvent::Modified(m2.clone()));
    let mut expect_del = m2;
    expect_del["metadata"]["resourceVersion"] = json!(rv(&m3).to_string());
    let e = next(&mut w).await?;
    ensure!(e == WatchEvent::Deleted(expect_del), "{e:?}");
    ensure!(next(&mut w).await? == WatchEvent::Added(b));
    Ok(())
}

async fn watch_from_old_revision_replays(kind: StoreKind) -> Result<()> {
    let (_c, s) = setup(kind).await?;
    let a = s.create(&key("a"), pod("a", "x"), false).await?;
    let b = s.create(&key("b"), pod("b", "x"), false).await?;
    let a2 = s
        .guaranteed_update(&key("a"), &Preconditions::default(), false, |mut o| {
            o["spec"]["n"] = json!(1);
            Ok::<_, String>(o)
        })
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let mut w = s.watch("/registry/pods", true, rv(&a), None, false).await?;
    ensure!(next(&mut w).await? == WatchEvent::Added(b));
    ensure!(next(&mut w).await? == WatchEvent::Modified(a2));
    Ok(())
}

async fn compacted_watch_is_410_event(kind: StoreKind) -> Result<()> {
    let (_c, s) = setup(kind).await?;
    let a = s.create(&key("a"), pod("a", "x"), false).await?;
    for i in 0..3 {
        s.guaranteed_update(&key("a"), &Preconditions::default(), false, |mut o| {
            o["spec"]["n"] = json!(i);
            Ok::<_, String>(o)
        })
        .await
        .map_err(|e| anyhow!("{e}"))?;
    }
    let compact_at = s.current_revision().await?;
    s.compact(compact_at).await?;
    let from = rv(&a);
    let mut w = s.watch("/registry/pods", true, from, None, false).await?;
    let e = next(&mut w).await?;
    let WatchEvent::Error(err) = e else {
        bail!("expected an error event, got {e:?}")
    };
    ensure!(
        err.http_code() == 410 && err.reason() == "Expired",
        "{err:?}"
    );
    ensure!(
        err.to_string() == format!("too old resource version: {from} ({compact_at})"),
        "{err}"
    );
    let end = tokio::time::timeout(T, w.next()).await?;
    ensure!(
        end.is_none(),
        "the stream continued after the error: {end:?}"
    );
    Ok(())
}

async fn watch_bookmarks(kind: StoreKind) -> Result<()> {
    // From an etcd whose requested progress may run ahead of events (before 3.4.31/3.5.13;
    // Debian ships 3.4.23), bookmarks come only from its periodic progress notifications, as
    // upstream's: make those frequent. kelson-kv answers requested progress in order.
    let opts = ClusterOpts {
        extra_args: match kind {
            StoreKind::Etcd => vec!["--experimental-watch-progress-notify-interval=500ms".into()],
            StoreKind::Kelson => Vec::new(),
        },
        ..ClusterOpts::default()
    };
    let (_c, s) = setup_with(kind, opts).await?;
    let mut w = s.watch("/registry/pods", true, 0, None, true).await?;
    let a = s.create(&key("a"), pod("a", "x"), false).await?;
    // Unrelated writes move the revision; the bookmark must reach at least the last of them.
    s.create("/registry/other/x", pod("x", "x"), false).await?;
    let latest = s.current_revision().await?;
    ensure!(next(&mut w).await? == WatchEvent::Added(a.clone()));
    let mut last = rv(&a);
    for _ in 0..50 {
        match next(&mut w).await? {
            WatchEvent::Bookmark(r) => {
                ensure!(r >= last, "bookmark {r} went back before {last}");
                last = r;
                if r >= latest {
                    return Ok(());
                }
            }
            e => bail!("unexpected event {e:?}"),
        }
    }
    bail!("no bookmark reached revision {latest} (last {last})")
}

async fn tls_connection(kind: StoreKind) -> Result<()> {
    let opts = ClusterOpts {
        tls: true,
        ..ClusterOpts::default()
    };
    let (c, s) = setup_with(kind, opts).await?;
    ensure!(c.endpoint(0).starts_with("https://"));
    let a = s.create(&key("a"), pod("a", "x"), false).await?;
    ensure!(s.get(&key("a"), None).await? == a);
    let mut w = s.watch("/registry/pods", true, 0, None, false).await?;
    let b = s.create(&key("b"), pod("b", "x"), false).await?;
    ensure!(next_change(&mut w).await? == WatchEvent::Added(b));
    // Without a client certificate the store refuses us.
    let p = c.pki().context("pki")?;
    let anon = Storage::connect_with(
        &c.endpoints(),
        Some(EtcdTls {
            ca: p.ca_cert.clone(),
            cert: None,
            key: None,
        }),
        StorageConfig {
            request_timeout: Duration::from_secs(3),
            ..StorageConfig::default()
        },
    )
    .await;
    if let Ok(anon) = anon {
        ensure!(
            anon.get(&key("a"), None).await.is_err(),
            "a client without a certificate was served"
        );
    }
    Ok(())
}

/// A TCP proxy in front of the store that can hold back the store's answers (the requests
/// still reach it): a write then commits while its caller times out, which is what a
/// proposal timeout or a broken connection looks like from the API server.
struct AnswerHoldingProxy {
    addr: std::net::SocketAddr,
    hold_until: Arc<parking_lot_free::Hold>,
    task: tokio::task::JoinHandle<()>,
}

mod parking_lot_free {
    /// The instant until which answers are held (std mutex: held only to copy an Instant).
    #[derive(Default)]
    pub struct Hold(pub std::sync::Mutex<Option<tokio::time::Instant>>);
    impl Hold {
        pub fn until(&self) -> Option<tokio::time::Instant> {
            *self.0.lock().unwrap_or_else(|e| e.into_inner())
        }
        pub fn set(&self, t: tokio::time::Instant) {
            *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
        }
    }
}

impl AnswerHoldingProxy {
    async fn start(upstream: String) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let hold = Arc::new(parking_lot_free::Hold::default());
        let h = hold.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                let h = h.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    });
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if let Some(t) = h.until() {
                            tokio::time::sleep_until(t).await;
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    up.abort();
                });
            }
        });
        Ok(AnswerHoldingProxy {
            addr,
            hold_until: hold,
            task,
        })
    }
}

impl Drop for AnswerHoldingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A create or update whose answer is lost after the store applied it must still succeed
/// (clients retry 503/504, and would then see `409 AlreadyExists` for their own create).
async fn lost_answers_are_resolved(kind: StoreKind) -> Result<()> {
    let (cluster, _) = setup(kind).await?;
    let upstream = cluster
        .endpoint(0)
        .trim_start_matches("http://")
        .to_string();
    let proxy = AnswerHoldingProxy::start(upstream).await?;
    let config = StorageConfig {
        request_timeout: Duration::from_millis(700),
        ..StorageConfig::default()
    };
    let s = Storage::connect_with(&[format!("http://{}", proxy.addr)], None, config).await?;
    s.current_revision().await?; // connected, answers flowing

    // Answers stop for a second: the create commits but its answer comes after the timeout.
    proxy
        .hold_until
        .set(tokio::time::Instant::now() + Duration::from_millis(1000));
    let created = s.create(&key("lost"), pod("lost", "x"), false).await?;
    let stored = cluster.client().await?.get(key("lost"), None).await?;
    ensure!(stored.kvs().len() == 1, "stored once");
    ensure!(
        rv(&created) == stored.kvs()[0].mod_revision(),
        "resourceVersion is the stored one: {created}"
    );

    // The same for an update (from the cached object, so the write is the first request).
    proxy
        .hold_until
        .set(tokio::time::Instant::now() + Duration::from_millis(1000));
    let opts = UpdateOptions {
        cached: Some(created),
        ..UpdateOptions::default()
    };
    let updated = s
        .guaranteed_update_with(&key("lost"), opts, |o| {
            let mut o = o.ok_or("missing")?;
            o["metadata"]["labels"]["app"] = json!("y");
            Ok::<_, &str>(o)
        })
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let stored = cluster.client().await?.get(key("lost"), None).await?;
    let v: Value = serde_json::from_slice(stored.kvs()[0].value())?;
    ensure!(v["metadata"]["labels"]["app"] == "y", "{v}");
    ensure!(rv(&updated) == stored.kvs()[0].mod_revision(), "{updated}");
    Ok(())
}
