//! LIST and watch through the watch cache, end to end with the stock kube client:
//! - metadata-only reads (`Api::list_metadata`, `get_metadata`, `watch_metadata`:
//!   `as=PartialObjectMetadata(List)`) answer with the objects' metadata;
//! - a JSON LIST spliced from the cache's encoded objects equals what GET returns, and paging
//!   with continue tokens walks every object once;
//! - a watch served by the cache sees every create/update/delete in order, with the writes'
//!   resourceVersions, across store compactions, and a watch from a compacted version is 410.
//!
//! - the caches start at boot: a watch from a version older than any LIST of the resource is
//!   served from the cache's ring, and GET with resourceVersion "0" or N from the cache
//!   (`apiserver_reads_total` on /metrics says which path served each read).
//!
//! Needs `cargo build -p kelson-kv -p kelson-apiserver`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kelson_testsupport::{ControlPlane, ControlPlaneOpts};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::ResourceExt;
use serde_json::json;

const T: Duration = Duration::from_secs(10);

fn cm(name: &str, app: &str) -> ConfigMap {
    serde_json::from_value(
        json!({"metadata": {"name": name, "labels": {"app": app}}, "data": {"k": "v"}}),
    )
    .expect("configmap")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_only_reads_and_spliced_lists() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    cp.kubectl_ok(&["create", "namespace", "meta"])?;
    let api: Api<ConfigMap> = Api::namespaced(cp.client().await?, "meta");
    for (n, app) in [("a", "x"), ("b", "x"), ("c", "y")] {
        api.create(&PostParams::default(), &cm(n, app)).await?;
    }

    let list = api
        .list_metadata(&ListParams::default().labels("app=x"))
        .await?;
    let names: Vec<String> = list.items.iter().map(|m| m.name_any()).collect();
    ensure!(names == ["a", "b"], "{names:?}");
    for m in &list.items {
        ensure!(
            m.types
                .as_ref()
                .is_some_and(|t| t.kind == "PartialObjectMetadata"),
            "{:?}",
            m.types
        );
        ensure!(m.labels().get("app").map(String::as_str) == Some("x"));
        ensure!(m.resource_version().is_some() && m.uid().is_some(), "{m:?}");
    }
    ensure!(list.metadata.resource_version.is_some());
    let one = api.get_metadata("c").await?;
    ensure!(
        one.name_any() == "c" && one.labels()["app"] == "y",
        "{one:?}"
    );
    ensure!(one
        .types
        .as_ref()
        .is_some_and(|t| t.api_version == "meta.k8s.io/v1"));

    // watch_metadata from "0": the current state as ADDED events, metadata only.
    let mut w = api
        .watch_metadata(&WatchParams::default().timeout(5), "0")
        .await?
        .boxed();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match tokio::time::timeout(T, w.try_next()).await?? {
            Some(WatchEvent::Added(m)) => seen.push(m.name_any()),
            Some(WatchEvent::Bookmark(_)) => {}
            other => bail!("unexpected {other:?}"),
        }
    }
    seen.sort();
    ensure!(seen == ["a", "b", "c"], "{seen:?}");

    // The spliced JSON list holds exactly what GET returns.
    let full = api.list(&ListParams::default()).await?;
    ensure!(full.items.len() == 3);
    for item in &full.items {
        let got = api.get(&item.name_any()).await?;
        ensure!(
            serde_json::to_value(&got)? == serde_json::to_value(item)?,
            "list item {} differs from GET",
            item.name_any()
        );
    }

    // Paging: limit 1 walks all three once, with a remaining count on the first page.
    let mut names = Vec::new();
    let mut lp = ListParams::default().limit(1);
    for _ in 0..5 {
        let page = api.list(&lp).await?;
        if names.is_empty() {
            ensure!(
                page.metadata.remaining_item_count == Some(2),
                "{:?}",
                page.metadata
            );
        }
        names.extend(page.items.iter().map(|c| c.name_any()));
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = ListParams::default().limit(1).continue_token(&c),
            _ => break,
        }
    }
    ensure!(names == ["a", "b", "c"], "{names:?}");

    // kubectl's Table path and the metadata Accept header on a non-resource path still work.
    let out = cp.kubectl_ok(&["-n", "meta", "get", "configmaps", "-l", "app=x"])?;
    ensure!(
        out.contains("a ") && out.contains("b ") && !out.contains("c "),
        "{out}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_watch_sees_every_event_in_order_across_compactions() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    cp.kubectl_ok(&["create", "namespace", "order"])?;
    let api: Api<ConfigMap> = Api::namespaced(cp.client().await?, "order");
    let rv = api
        .list(&ListParams::default())
        .await?
        .metadata
        .resource_version
        .context("list resourceVersion")?;
    let mut w = api
        .watch(&WatchParams::default().timeout(60), &rv)
        .await?
        .boxed();
    let mut etcd = cp.store().client().await?;

    let mut want: Vec<(&str, String, String)> = Vec::new();
    for round in 0..3 {
        for i in 0..4 {
            let n = format!("c{round}-{i}");
            let o = api.create(&PostParams::default(), &cm(&n, "a")).await?;
            want.push(("ADDED", n.clone(), o.resource_version().unwrap_or_default()));
            let o = api
                .patch(
                    &n,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"data": {"k": round.to_string()}})),
                )
                .await?;
            want.push((
                "MODIFIED",
                n.clone(),
                o.resource_version().unwrap_or_default(),
            ));
            if i % 2 == 1 {
                api.delete(&n, &DeleteParams::default()).await?;
                want.push(("DELETED", n.clone(), String::new()));
            }
        }
        let head = etcd
            .get("/", Some(etcd_client::GetOptions::new().with_count_only()))
            .await?
            .header()
            .context("header")?
            .revision();
        etcd.compact(head, None).await?;
    }

    let mut last = 0i64;
    for (ty, name, rv) in &want {
        let ev = loop {
            match tokio::time::timeout(T, w.try_next()).await?? {
                Some(WatchEvent::Bookmark(_)) => continue,
                Some(e) => break e,
                None => bail!("the watch ended before {ty} {name}"),
            }
        };
        let (got, obj) = match ev {
            WatchEvent::Added(o) => ("ADDED", o),
            WatchEvent::Modified(o) => ("MODIFIED", o),
            WatchEvent::Deleted(o) => ("DELETED", o),
            other => bail!("unexpected {other:?}"),
        };
        let got_rv = obj.resource_version().unwrap_or_default();
        ensure!(
            got == *ty && obj.name_any() == *name,
            "got {got} {}, want {ty} {name}",
            obj.name_any()
        );
        ensure!(
            rv.is_empty() || got_rv == *rv,
            "{ty} {name}: rv {got_rv}, the write returned {rv}"
        );
        let n: i64 = got_rv.parse()?;
        ensure!(
            n > last,
            "resourceVersions not increasing: {n} after {last}"
        );
        last = n;
    }

    // The cache's state equals the store's: a consistent list has the survivors.
    let names: BTreeMap<String, String> = api
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|c| (c.name_any(), c.resource_version().unwrap_or_default()))
        .collect();
    ensure!(names.len() == 6, "{names:?}");

    // A watch from before the compactions is 410 Expired (an ERROR event).
    let mut old = api
        .watch(&WatchParams::default().timeout(5), &rv)
        .await?
        .boxed();
    match tokio::time::timeout(T, old.next()).await? {
        Some(Ok(WatchEvent::Error(e))) => ensure!(e.code == 410, "{e:?}"),
        Some(Err(e)) => ensure!(
            e.to_string().contains("410") || e.to_string().contains("too old"),
            "{e}"
        ),
        other => bail!("expected 410, got {other:?}"),
    }
    Ok(())
}

/// The reads counted on /metrics: `(verb, source) -> count`.
async fn reads(metrics_addr: &str) -> BTreeMap<(String, String), u64> {
    let text = kelson_testsupport::probe::http_get(metrics_addr, "/metrics").await;
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_reads_total{"))
    {
        let label = |k: &str| {
            line.split(&format!("{k}=\"")[..])
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or_default()
                .to_string()
        };
        let n = line
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or(-1.0);
        out.insert((label("verb"), label("source")), n as u64);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caches_start_at_boot_and_serve_old_watches_and_versioned_gets() -> anyhow::Result<()> {
    let maddr = format!("127.0.0.1:{}", kelson_testsupport::free_port());
    let cp = ControlPlane::start_with(ControlPlaneOpts {
        apiserver_args: vec!["--metrics-addr".into(), maddr.clone()],
    })
    .await?;
    cp.kubectl_ok(&["create", "namespace", "boot"])?;
    let client = cp.client().await?;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "boot");
    let a = api.create(&PostParams::default(), &cm("a", "x")).await?;
    let rv_a = a.resource_version().context("rv")?;
    api.create(&PostParams::default(), &cm("b", "x")).await?;
    let patched = api
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": "2"}})),
        )
        .await?;

    // Nothing listed configmaps through this server yet: the watch from `a`'s version is
    // served from the ring of the cache that started at boot.
    let mut w = api
        .watch(&WatchParams::default().timeout(30), &rv_a)
        .await?
        .boxed();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match tokio::time::timeout(T, w.try_next()).await?? {
            Some(WatchEvent::Added(o)) => seen.push(format!("ADDED {}", o.name_any())),
            Some(WatchEvent::Modified(o)) => {
                ensure!(o.resource_version() == patched.resource_version());
                seen.push(format!("MODIFIED {}", o.name_any()))
            }
            Some(WatchEvent::Bookmark(_)) => {}
            other => bail!("unexpected {other:?}"),
        }
    }
    ensure!(seen == ["ADDED b", "MODIFIED a"], "{seen:?}");

    // GET at "0" and at the patch's version: from the cache, the same bytes a store GET gives.
    let path = "/api/v1/namespaces/boot/configmaps/a";
    let get = |q: String| {
        let client = client.clone();
        async move {
            let req = http::Request::get(format!("{path}{q}")).body(Vec::new())?;
            let text = client.request_text(req).await?;
            anyhow::Ok(serde_json::from_str::<serde_json::Value>(&text)?)
        }
    };
    let latest = get(String::new()).await?;
    let any = get("?resourceVersion=0".into()).await?;
    let at = get(format!(
        "?resourceVersion={}",
        patched.resource_version().unwrap_or_default()
    ))
    .await?;
    ensure!(any == latest && at == latest, "{any}\n{at}\n{latest}");
    ensure!(latest["data"]["k"] == "2", "{latest}");
    let missing = client
        .request_text(
            http::Request::get("/api/v1/namespaces/boot/configmaps/nope?resourceVersion=0")
                .body(Vec::new())?,
        )
        .await
        .expect_err("a missing object is 404");
    ensure!(missing.to_string().contains("not found"), "{missing}");

    let r = reads(&maddr).await;
    let n = |verb: &str, source: &str| {
        r.get(&(verb.to_string(), source.to_string()))
            .copied()
            .unwrap_or(0)
    };
    ensure!(
        n("watch", "cache") == 1 && n("watch", "store") == 0,
        "{r:?}"
    );
    ensure!(n("get", "cache") == 3 && n("get", "store") >= 1, "{r:?}");
    Ok(())
}
