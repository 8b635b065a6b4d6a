//! API semantics over raw HTTPS (what kubectl does not easily show): limits and media types,
//! Tables, paging, dry run, status/scale/binding subresources, watch streams and 410s,
//! NamespaceLifecycle, generateName, node-port conflicts, deletecollection.

mod common;

use std::time::Duration;

use common::ApiCluster;
use kelson_testsupport::StoreKind;
use serde_json::json;

fn cm(name: &str, labels: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}, "data": {"k": "v"}})
}

#[tokio::test(flavor = "multi_thread")]
async fn http_semantics() {
    let c = ApiCluster::start(StoreKind::Kelson, &[]).await.unwrap();
    let cms = "/api/v1/namespaces/default/configmaps";

    // Media types and limits.
    let big = vec![b' '; 3 * 1024 * 1024 + 10];
    let r = c
        .request(
            Some("admin"),
            "POST",
            cms,
            &[("content-type", "application/json")],
            big,
        )
        .await;
    assert_eq!(r.status, 413, "{}", r.text());
    let r = c
        .request(
            Some("admin"),
            "POST",
            cms,
            &[("content-type", "text/plain")],
            b"x".to_vec(),
        )
        .await;
    assert_eq!(r.status, 415);
    let r = c
        .request(
            Some("admin"),
            "PATCH",
            &format!("{cms}/x"),
            &[("content-type", "application/apply-patch+yaml")],
            b"{}".to_vec(),
        )
        .await;
    // Server-side apply is served (tests/apply.rs); without a fieldManager it is a 422.
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(
        r.text().contains("fieldManager: Required value"),
        "{}",
        r.text()
    );
    let r = c
        .request(None, "GET", "/api/v1/namespaces", &[], vec![])
        .await;
    assert_eq!(
        (r.status, r.json()["reason"].clone()),
        (401, json!("Unauthorized"))
    );
    let r = c.get("/api/v1/nope").await;
    assert_eq!((r.status, r.json()["kind"].clone()), (404, json!("Status")));
    let r = c
        .request(
            Some("admin"),
            "GET",
            "/api/v1/namespaces/default",
            &[("accept", "application/yaml")],
            vec![],
        )
        .await;
    assert_eq!(r.headers["content-type"], "application/yaml");
    assert!(r.text().contains("name: default"), "{}", r.text());
    let r = c
        .request(
            Some("admin"),
            "GET",
            "/api/v1/namespaces",
            &[("accept", "application/vnd.kubernetes.protobuf")],
            vec![],
        )
        .await;
    assert_eq!(r.status, 406);
    let v = c.get("/version").await.json();
    assert_eq!(
        (
            v["major"].clone(),
            v["minor"].clone(),
            v["gitVersion"].clone()
        ),
        (json!("1"), json!("33"), json!("v1.33.0-kelson"))
    );
    let r = c.get("/readyz?verbose").await;
    assert!(r.text().contains("[+]etcd ok"), "{}", r.text());

    // Type errors are 400 whatever fieldValidation says, never a dropped connection.
    let bad = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "bad"}, "spec": {"replicas": "three", "template": "x"}});
    let r = c
        .send_json(
            "POST",
            "/apis/apps/v1/namespaces/default/deployments?fieldValidation=Ignore",
            &bad,
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("cannot be handled as a Deployment"),
        "{}",
        r.text()
    );

    // The kubernetes service has the range's first address.
    let k = c
        .get("/api/v1/namespaces/default/services/kubernetes")
        .await
        .json();
    assert_eq!(k["spec"]["clusterIP"], "10.96.0.1");

    // generateName, namespace mismatch, dry run.
    let r = c
        .send_json(
            "POST",
            cms,
            &json!({"metadata": {"generateName": "gen-"}, "data": {}}),
        )
        .await;
    assert_eq!(r.status, 201);
    let name = r.json()["metadata"]["name"].as_str().unwrap().to_string();
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");
    let r = c
        .send_json(
            "POST",
            cms,
            &json!({"metadata": {"name": "x", "namespace": "kube-system"}}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = c
        .send_json("POST", &format!("{cms}?dryRun=All"), &cm("dry", json!({})))
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(c.get(&format!("{cms}/dry")).await.status, 404);

    // Paging.
    for i in 0..5 {
        assert_eq!(
            c.send_json(
                "POST",
                cms,
                &cm(&format!("page-{i}"), json!({"paged": "yes"}))
            )
            .await
            .status,
            201
        );
    }
    let p1 = c
        .get(&format!("{cms}?labelSelector=paged%3Dyes&limit=2"))
        .await
        .json();
    assert_eq!(p1["items"].as_array().unwrap().len(), 2);
    // Upstream counts the remaining items only when no selector filters the list (a count of
    // the keys left would include objects the selector drops).
    assert!(p1["metadata"].get("remainingItemCount").is_none(), "{p1}");
    let total = c.get(cms).await.json()["items"].as_array().unwrap().len() as i64;
    let unfiltered = c.get(&format!("{cms}?limit=2")).await.json();
    assert_eq!(unfiltered["metadata"]["remainingItemCount"], total - 2);
    let tok = p1["metadata"]["continue"].as_str().unwrap().to_string();
    let p2 = c
        .get(&format!(
            "{cms}?labelSelector=paged%3Dyes&limit=2&continue={tok}"
        ))
        .await
        .json();
    assert_eq!(p2["items"][0]["metadata"]["name"], "page-2");
    assert_eq!(
        p2["metadata"]["resourceVersion"], p1["metadata"]["resourceVersion"],
        "one snapshot across pages"
    );

    // Table.
    let t = c
        .request(
            Some("admin"),
            "GET",
            cms,
            &[(
                "accept",
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
            )],
            vec![],
        )
        .await
        .json();
    assert_eq!(t["kind"], "Table");
    assert_eq!(t["columnDefinitions"][1]["name"], "Data");
    assert!(t["rows"].as_array().unwrap().len() >= 6);

    // deletecollection by label.
    let r = c
        .request(
            Some("admin"),
            "DELETE",
            &format!("{cms}?labelSelector=paged%3Dyes"),
            &[],
            vec![],
        )
        .await;
    assert_eq!(r.json()["items"].as_array().unwrap().len(), 5);
    assert_eq!(
        c.get(&format!("{cms}?labelSelector=paged%3Dyes"))
            .await
            .json()["items"],
        json!([])
    );

    // Unconditional update (no resourceVersion) succeeds; a stale one is 409.
    let cur = c.send_json("POST", cms, &cm("upd", json!({}))).await.json();
    let r = c
        .send_json(
            "PUT",
            &format!("{cms}/upd"),
            &json!({"metadata": {"name": "upd"}, "data": {"k": "2"}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut stale = cur.clone();
    stale["data"]["k"] = json!("3");
    assert_eq!(
        c.send_json("PUT", &format!("{cms}/upd"), &stale)
            .await
            .status,
        409
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn subresources_and_admission() {
    let c = ApiCluster::start(StoreKind::Kelson, &[]).await.unwrap();
    let deps = "/apis/apps/v1/namespaces/default/deployments";
    let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}},
        "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}, "status": {"replicas": 9}});
    let created = c.send_json("POST", deps, &d).await.json();
    assert_eq!(created["spec"]["replicas"], 1);
    assert_eq!(created["status"], json!({}), "status is reset on create");

    // Status PUT changes only status; main PUT ignores status.
    let mut s = created.clone();
    s["status"] = json!({"replicas": 1, "readyReplicas": 1});
    s["spec"]["replicas"] = json!(7);
    let r = c
        .send_json("PUT", &format!("{deps}/d/status"), &s)
        .await
        .json();
    assert_eq!(
        (
            r["status"]["readyReplicas"].clone(),
            r["spec"]["replicas"].clone()
        ),
        (json!(1), json!(1))
    );
    let mut m = r.clone();
    m["status"] = json!({"readyReplicas": 5});
    m["spec"]["replicas"] = json!(2);
    let r = c.send_json("PUT", &format!("{deps}/d"), &m).await.json();
    assert_eq!(
        (
            r["status"]["readyReplicas"].clone(),
            r["spec"]["replicas"].clone()
        ),
        (json!(1), json!(2))
    );
    assert_eq!(r["metadata"]["generation"], 2);

    // Scale.
    let sc = c.get(&format!("{deps}/d/scale")).await.json();
    assert_eq!(
        (
            sc["kind"].clone(),
            sc["apiVersion"].clone(),
            sc["spec"]["replicas"].clone()
        ),
        (json!("Scale"), json!("autoscaling/v1"), json!(2))
    );
    assert_eq!(sc["status"]["selector"], "a=b");
    let r = c.send_json("PUT", &format!("{deps}/d/scale"), &json!({"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "d"}, "spec": {"replicas": 4}})).await;
    assert_eq!(r.json()["spec"]["replicas"], 4);
    assert_eq!(
        c.get(&format!("{deps}/d")).await.json()["spec"]["replicas"],
        4
    );

    // Binding.
    let pods = "/api/v1/namespaces/default/pods";
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    assert_eq!(c.send_json("POST", pods, &pod).await.status, 201);
    let b = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"}, "target": {"kind": "Node", "name": "n1"}});
    assert_eq!(
        c.send_json("POST", &format!("{pods}/p/binding"), &b)
            .await
            .status,
        201
    );
    let p = c.get(&format!("{pods}/p")).await.json();
    assert_eq!(p["spec"]["nodeName"], "n1");
    let r = c.send_json("POST", &format!("{pods}/p/binding"), &b).await;
    assert_eq!(r.status, 409, "{}", r.text());
    let sel = c
        .get(&format!("{pods}?fieldSelector=spec.nodeName%3Dn1"))
        .await
        .json();
    assert_eq!(sel["items"].as_array().unwrap().len(), 1);
    // A bound pod is deleted gracefully; grace 0 removes it.
    let r = c
        .request(Some("admin"), "DELETE", &format!("{pods}/p"), &[], vec![])
        .await;
    assert_eq!(r.status, 202);
    assert!(r.json()["metadata"]["deletionTimestamp"].is_string());
    let r = c
        .request(
            Some("admin"),
            "DELETE",
            &format!("{pods}/p?gracePeriodSeconds=0"),
            &[],
            vec![],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(c.get(&format!("{pods}/p")).await.status, 404);

    // Node ports are allocated once across services.
    let svcs = "/api/v1/namespaces/default/services";
    let svc = |n: &str| json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": n}, "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}});
    let r = c.send_json("POST", svcs, &svc("a")).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = c.send_json("POST", svcs, &svc("b")).await;
    assert_eq!(r.status, 422);
    assert!(
        r.text().contains("provided port is already allocated"),
        "{}",
        r.text()
    );
    assert_eq!(
        c.request(Some("admin"), "DELETE", &format!("{svcs}/a"), &[], vec![])
            .await
            .status,
        200
    );
    assert_eq!(
        c.send_json("POST", svcs, &svc("b")).await.status,
        201,
        "released on delete"
    );

    // Type changes allocate and release node ports.
    let merge = |body: serde_json::Value| body.to_string().into_bytes();
    let ct = [("content-type", "application/merge-patch+json")];
    let r = c
        .request(
            Some("admin"),
            "PATCH",
            &format!("{svcs}/b"),
            &ct,
            merge(json!({"spec": {"type": "ClusterIP"}})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.json()["spec"]["ports"][0]["nodePort"].is_null(),
        "{}",
        r.text()
    );
    let c2 = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "c"}, "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}});
    assert_eq!(
        c.send_json("POST", svcs, &c2).await.status,
        201,
        "30080 was released"
    );
    let r = c
        .request(
            Some("admin"),
            "PATCH",
            &format!("{svcs}/b"),
            &ct,
            merge(json!({"spec": {"type": "NodePort"}})),
        )
        .await;
    let np = r.json()["spec"]["ports"][0]["nodePort"]
        .as_i64()
        .unwrap_or(0);
    assert!((30000..=32767).contains(&np) && np != 30080, "{}", r.text());

    // NamespaceLifecycle: a terminating namespace refuses new content with 403.
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "term"}});
    assert_eq!(
        c.send_json("POST", "/api/v1/namespaces", &ns).await.status,
        201
    );
    let held = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "held", "finalizers": ["example.com/x"]}});
    assert_eq!(
        c.send_json("POST", "/api/v1/namespaces/term/configmaps", &held)
            .await
            .status,
        201
    );
    c.request(
        Some("admin"),
        "DELETE",
        "/api/v1/namespaces/term",
        &[],
        vec![],
    )
    .await;
    let r = c
        .send_json(
            "POST",
            "/api/v1/namespaces/term/configmaps",
            &cm("new", json!({})),
        )
        .await;
    assert_eq!(r.status, 403);
    assert!(
        r.text().contains(
            "unable to create new content in namespace term because it is being terminated"
        ),
        "{}",
        r.text()
    );
    let r = c
        .send_json(
            "POST",
            "/api/v1/namespaces/missing/configmaps",
            &cm("new", json!({})),
        )
        .await;
    assert_eq!(r.status, 404);

    // A namespace with another finalizer stays Terminating until /finalize clears it.
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "fin2"},
        "spec": {"finalizers": ["example.com/custom"]}});
    assert_eq!(
        c.send_json("POST", "/api/v1/namespaces", &ns).await.status,
        201
    );
    let r = c
        .request(
            Some("admin"),
            "DELETE",
            "/api/v1/namespaces/fin2",
            &[],
            vec![],
        )
        .await;
    assert_eq!(r.json()["status"]["phase"], "Terminating");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cur = c.get("/api/v1/namespaces/fin2").await;
    assert_eq!(cur.status, 200, "kept for its custom finalizer");
    let mut fin = cur.json();
    fin["spec"]["finalizers"] = json!([]);
    let r = c
        .send_json("PUT", "/api/v1/namespaces/fin2/finalize", &fin)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(c.get("/api/v1/namespaces/fin2").await.status, 404);

    // Foreground deletion leaves the GC's finalizer on the object.
    let cms = "/api/v1/namespaces/default/configmaps";
    assert_eq!(
        c.send_json("POST", cms, &cm("fg", json!({}))).await.status,
        201
    );
    let r = c
        .send_json(
            "DELETE",
            &format!("{cms}/fg"),
            &json!({"propagationPolicy": "Foreground"}),
        )
        .await;
    assert_eq!(r.status, 202);
    assert_eq!(
        r.json()["metadata"]["finalizers"],
        json!(["foregroundDeletion"])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_streams_and_expiry() {
    let c = ApiCluster::start(StoreKind::Kelson, &[]).await.unwrap();
    let cms = "/api/v1/namespaces/default/configmaps";
    let first = c.send_json("POST", cms, &cm("w0", json!({}))).await.json();
    let rv: i64 = first["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // From rv: later changes only, then the stream ends at timeoutSeconds.
    let c2 = std::sync::Arc::new(c);
    let writer = {
        let c = c2.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            c.send_json("POST", cms, &cm("w1", json!({"x": "y"}))).await;
            c.request(Some("admin"), "DELETE", &format!("{cms}/w1"), &[], vec![])
                .await;
        })
    };
    let r = c2
        .get(&format!(
            "{cms}?watch=1&resourceVersion={rv}&timeoutSeconds=2"
        ))
        .await;
    writer.await.unwrap();
    let events: Vec<serde_json::Value> = r
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_string(),
                e["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("ADDED".into(), "w1".into()),
            ("DELETED".into(), "w1".into())
        ],
        "{}",
        r.text()
    );

    // Without rv: the current state first; label-filtered; legacy /watch/ path.
    let r = c2
        .get("/api/v1/watch/namespaces/default/configmaps?timeoutSeconds=1")
        .await;
    assert!(
        r.text()
            .lines()
            .any(|l| l.contains("\"ADDED\"") && l.contains("\"w0\"")),
        "{}",
        r.text()
    );
    let r = c2
        .get(&format!(
            "{cms}?watch=true&labelSelector=x%3Dy&timeoutSeconds=1"
        ))
        .await;
    assert!(r.text().is_empty(), "{}", r.text());

    // Bookmarks carry a resourceVersion at least as new as the last event.
    let head: i64 = c2.get(cms).await.json()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let r = c2
        .get(&format!(
            "{cms}?watch=1&resourceVersion={head}&allowWatchBookmarks=true&timeoutSeconds=3"
        ))
        .await;
    let marks: Vec<i64> = r
        .text()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["type"] == "BOOKMARK")
        .map(|e| {
            e["object"]["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(
        !marks.is_empty() && marks.iter().all(|m| *m >= head),
        "{}",
        r.text()
    );

    // A compacted start revision is an ERROR event carrying a 410 Expired Status.
    for i in 0..3 {
        c2.send_json("POST", cms, &cm(&format!("c{i}"), json!({})))
            .await;
    }
    let mut etcd = c2.store.client().await.unwrap();
    let head = etcd
        .get("/", Some(etcd_client::GetOptions::new().with_count_only()))
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    etcd.compact(head, None).await.unwrap();
    let r = c2
        .get(&format!(
            "{cms}?watch=1&resourceVersion={rv}&timeoutSeconds=2"
        ))
        .await;
    let ev: serde_json::Value =
        serde_json::from_str(r.text().lines().next().unwrap_or("{}")).unwrap();
    assert_eq!(ev["type"], "ERROR", "{}", r.text());
    assert_eq!(ev["object"]["code"], 410);
    assert_eq!(ev["object"]["reason"], "Expired");
}
