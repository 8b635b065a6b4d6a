//! CustomResourceDefinition version conversion: a conversion webhook (HTTPS on loopback,
//! started by the test) between a v1 storage version and a v2 with a renamed field; reads,
//! lists, watches and writes in both versions; upstream's errors for a failing webhook and for
//! invalid conversion stanzas; a webhook reached through a Service's Endpoints.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use common::ApiCluster;
use kelson_pki::{Ca, CertRequest, Usage};
use kelson_testsupport::StoreKind;
use rustls_pki_types::pem::PemObject;
use serde_json::{json, Value};

const GROUP: &str = "conv.example.com";
const V1: &str = "/apis/conv.example.com/v1/namespaces/default/widgets";
const V2: &str = "/apis/conv.example.com/v2/namespaces/default/widgets";

/// What the test webhook saw and how it behaves.
#[derive(Default)]
struct HookState {
    /// Answer every review with `result.status: Failure`.
    fail: AtomicBool,
    calls: AtomicUsize,
    /// `desiredAPIVersion` and object count of every review.
    seen: Mutex<Vec<(String, usize)>>,
}

/// An HTTPS conversion webhook on loopback, on its own runtime thread (kubectl calls block
/// the test's workers), stopped on drop.
struct Hook {
    port: u16,
    ca_pem: String,
    state: Arc<HookState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Hook {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// v1 `spec.cronSpec` is v2 `spec.schedule`; everything else is copied.
fn convert_object(mut o: Value, desired: &str) -> Value {
    let spec = o["spec"].as_object_mut().cloned().unwrap_or_default();
    let mut spec = spec;
    if desired.ends_with("/v2") {
        if let Some(c) = spec.remove("cronSpec") {
            spec.insert("schedule".into(), c);
        }
    } else if let Some(s) = spec.remove("schedule") {
        spec.insert("cronSpec".into(), s);
    }
    o["spec"] = Value::Object(spec);
    o["apiVersion"] = json!(desired);
    o
}

fn review_answer(state: &HookState, review: &Value) -> Value {
    let req = &review["request"];
    let desired = req["desiredAPIVersion"].as_str().unwrap_or_default();
    let objects = req["objects"].as_array().cloned().unwrap_or_default();
    state.calls.fetch_add(1, Ordering::SeqCst);
    state
        .seen
        .lock()
        .unwrap()
        .push((desired.to_string(), objects.len()));
    let response = if state.fail.load(Ordering::SeqCst) {
        json!({"uid": req["uid"], "result": {"status": "Failure", "message": "refused by the test webhook"}})
    } else {
        let converted: Vec<Value> = objects
            .into_iter()
            .map(|o| convert_object(o, desired))
            .collect();
        json!({"uid": req["uid"], "result": {"status": "Success"}, "convertedObjects": converted})
    };
    json!({"apiVersion": review["apiVersion"], "kind": "ConversionReview", "response": response})
}

fn start_hook() -> Hook {
    let ca = Ca::generate("conversion-webhook-test-ca").unwrap();
    let leaf = ca
        .issue(&CertRequest {
            dns_names: vec!["conv.default.svc".into()],
            ip_addresses: vec!["127.0.0.1".parse().unwrap()],
            ..CertRequest::new("conv.default.svc", Usage::Server)
        })
        .unwrap();
    let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let state = Arc::new(HookState::default());
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let st = state.clone();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (tcp, _) = tokio::select! {
                    _ = &mut stopped => return,
                    c = listener.accept() => match c { Ok(c) => c, Err(_) => continue },
                };
                let acceptor = acceptor.clone();
                let st = st.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let st = st.clone();
                            async move {
                                use http_body_util::BodyExt;
                                let path = req.uri().path().to_string();
                                let body = req.into_body().collect().await?.to_bytes();
                                let (code, out) = match serde_json::from_slice::<Value>(&body) {
                                    Ok(review) if path == "/convert" => {
                                        (200, review_answer(&st, &review))
                                    }
                                    Ok(_) => {
                                        (404, json!({"error": format!("no handler for {path}")}))
                                    }
                                    Err(e) => (400, json!({"error": e.to_string()})),
                                };
                                let resp = http::Response::builder()
                                    .status(code)
                                    .header("content-type", "application/json")
                                    .body(http_body_util::Full::new(Bytes::from(out.to_string())))
                                    .unwrap();
                                Ok::<_, hyper::Error>(resp)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
    });
    Hook {
        port,
        ca_pem: ca.cert_pem().to_string(),
        state,
        stop: Some(stop),
        thread: Some(thread),
    }
}

/// A two-version CRD (v1 stores `spec.cronSpec`, v2 calls it `spec.schedule`) converted by
/// `client_config`.
fn crd(client_config: Value) -> Value {
    let version = |name: &str, field: &str, column: &str, storage: bool| {
        let mut props = serde_json::Map::new();
        props.insert(
            field.into(),
            json!({"type": "string", "description": format!("{name}'s {field}")}),
        );
        props.insert("size".into(), json!({"type": "integer", "default": 1}));
        json!({"name": name, "served": true, "storage": storage,
            "subresources": {"status": {}},
            "additionalPrinterColumns": [
                {"name": column, "type": "string", "jsonPath": format!(".spec.{field}")},
                {"name": "Size", "type": "integer", "jsonPath": ".spec.size"}],
            "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                "spec": {"type": "object", "required": [field], "properties": props},
                "status": {"type": "object", "properties": {"replicas": {"type": "integer"}}}}}}})
    };
    json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.conv.example.com"},
        "spec": {"group": GROUP, "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
            "conversion": {"strategy": "Webhook", "webhook": {
                "conversionReviewVersions": ["v1", "v1beta1"], "clientConfig": client_config}},
            "versions": [version("v1", "cronSpec", "Cron", true), version("v2", "schedule", "Schedule", false)]}})
}

fn url_config(hook: &Hook) -> Value {
    json!({"url": format!("https://127.0.0.1:{}/convert", hook.port),
           "caBundle": base64::engine::general_purpose::STANDARD.encode(&hook.ca_pem)})
}

/// Polls (bounded) until `f` holds.
async fn eventually<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn install(c: &ApiCluster, crd: &Value) {
    let r = c
        .send_json(
            "POST",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            crd,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    c.ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=10s",
        "crd/widgets.conv.example.com",
    ]);
    eventually(
        "both versions served",
        Duration::from_secs(10),
        || async move { c.get(V1).await.status == 200 && c.get(V2).await.status == 200 },
    )
    .await;
}

/// The object as stored (JSON straight from the store).
fn stored(c: &ApiCluster, name: &str) -> Value {
    let key = format!("/registry/conv.example.com/widgets/default/{name}");
    let out = c.store.etcdctl(&["get", &key, "--print-value-only"]);
    assert!(
        out.status.success(),
        "etcdctl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stored {name} is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

async fn merge_patch(c: &ApiCluster, path: &str, patch: Value) -> common::Resp {
    c.request(
        Some("admin"),
        "PATCH",
        path,
        &[("content-type", "application/merge-patch+json")],
        patch.to_string().into_bytes(),
    )
    .await
}

/// The watch events (type, object) in a finished watch response.
fn events(body: &str) -> Vec<(String, Value)> {
    body.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["type"].as_str().unwrap_or_default().to_string(),
                v["object"].clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_converts_reads_writes_lists_and_watches() {
    let hook = start_hook();
    let c = ApiCluster::start(StoreKind::Kelson, &[]).await.unwrap();
    install(&c, &crd(url_config(&hook))).await;

    // Created in v1 (the storage version): stored as is, read back in v2 by the webhook.
    let a = json!({"apiVersion": "conv.example.com/v1", "kind": "Widget",
        "metadata": {"name": "a", "labels": {"app": "w"}}, "spec": {"cronSpec": "*/1 * * * *"}});
    let r = c.send_json("POST", V1, &a).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        r.json()["spec"],
        json!({"cronSpec": "*/1 * * * *", "size": 1})
    );
    let before = hook.state.calls.load(Ordering::SeqCst);
    let o = c.get(&format!("{V2}/a")).await;
    assert_eq!(o.status, 200, "{}", o.text());
    let o = o.json();
    assert_eq!(o["apiVersion"], "conv.example.com/v2");
    assert_eq!(o["spec"], json!({"schedule": "*/1 * * * *", "size": 1}));
    assert_eq!(o["metadata"]["labels"], json!({"app": "w"}));
    assert!(hook.state.calls.load(Ordering::SeqCst) > before);

    // Created in v2: validated and defaulted by v2's schema, stored in v1.
    let b = json!({"apiVersion": "conv.example.com/v2", "kind": "Widget",
        "metadata": {"name": "b"}, "spec": {"schedule": "0 * * * *"}});
    let r = c.send_json("POST", V2, &b).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let created = r.json();
    assert_eq!(
        (created["apiVersion"].as_str(), &created["spec"]),
        (
            Some("conv.example.com/v2"),
            &json!({"schedule": "0 * * * *", "size": 1})
        )
    );
    let raw = stored(&c, "b");
    assert_eq!(raw["apiVersion"], "conv.example.com/v1", "{raw}");
    assert_eq!(raw["spec"], json!({"cronSpec": "0 * * * *", "size": 1}));
    // v2's schema judges v2 objects: a v1 field name is unknown there and the required one missing.
    let bad = json!({"apiVersion": "conv.example.com/v2", "kind": "Widget",
        "metadata": {"name": "bad"}, "spec": {"cronSpec": "0 * * * *"}});
    let r = c.send_json("POST", V2, &bad).await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.json()["details"]["causes"][0]["field"], "spec.schedule");

    // Lists in both versions; one review converts every item that needs it.
    for (path, version, field) in [(V1, "v1", "cronSpec"), (V2, "v2", "schedule")] {
        let l = c.get(path).await.json();
        assert_eq!(l["kind"], "WidgetList");
        assert_eq!(l["apiVersion"], format!("conv.example.com/{version}"));
        let items = l["items"].as_array().unwrap();
        assert_eq!(items.len(), 2, "{l}");
        for it in items {
            assert_eq!(
                it["apiVersion"],
                format!("conv.example.com/{version}"),
                "{it}"
            );
            assert!(it["spec"][field].is_string(), "{it}");
        }
    }
    assert!(
        hook.state
            .seen
            .lock()
            .unwrap()
            .iter()
            .any(|(v, n)| v == "conv.example.com/v2" && *n == 2),
        "a list in v2 converts both items in one review"
    );

    // kubectl uses the preferred version (v2) and its printer columns; v1 on request.
    let t = c.ok(&["get", "wd"]);
    assert!(t.lines().next().unwrap().contains("SCHEDULE"), "{t}");
    assert!(t.contains("0 * * * *"), "{t}");
    let t = c.ok(&["get", "widgets.v1.conv.example.com"]);
    assert!(t.lines().next().unwrap().contains("CRON"), "{t}");
    let o: Value = serde_json::from_str(&c.ok(&["get", "wd", "a", "-o", "json"])).unwrap();
    assert_eq!(o["spec"]["schedule"], "*/1 * * * *");

    // Writes in v2 (merge patch, update, status) land in v1 storage.
    let r = merge_patch(
        &c,
        &format!("{V2}/a"),
        json!({"spec": {"schedule": "5 * * * *"}}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["spec"]["schedule"], "5 * * * *");
    assert_eq!(stored(&c, "a")["spec"]["cronSpec"], "5 * * * *");
    let mut o = c.get(&format!("{V2}/b")).await.json();
    o["spec"]["size"] = json!(4);
    let r = c.send_json("PUT", &format!("{V2}/b"), &o).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v1b = c.get(&format!("{V1}/b")).await.json();
    assert_eq!(v1b["spec"], json!({"cronSpec": "0 * * * *", "size": 4}));
    assert_eq!(v1b["metadata"]["generation"], 2);
    o = c.get(&format!("{V2}/b")).await.json();
    o["status"] = json!({"replicas": 2});
    let r = c.send_json("PUT", &format!("{V2}/b/status"), &o).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(stored(&c, "b")["status"], json!({"replicas": 2}));
    // Server-side apply in v2.
    let r = c
        .request(
            Some("admin"),
            "PATCH",
            &format!("{V2}/b?fieldManager=tester&force=true"),
            &[("content-type", "application/apply-patch+yaml")],
            b"apiVersion: conv.example.com/v2\nkind: Widget\nmetadata: {name: b}\nspec: {schedule: '9 * * * *'}\n".to_vec(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(stored(&c, "b")["spec"]["cronSpec"], "9 * * * *");

    // Watches in both versions see one write, each in its own version.
    let rv = c.get(V1).await.json()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let watch = |base: &str| format!("{base}?watch=true&resourceVersion={rv}&timeoutSeconds=3");
    let (u1, u2) = (watch(V1), watch(V2));
    let (w1, w2, p) = tokio::join!(c.get(&u1), c.get(&u2), async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        merge_patch(&c, &format!("{V1}/a"), json!({"spec": {"size": 7}})).await
    });
    assert_eq!(p.status, 200, "{}", p.text());
    for (w, version, field) in [(w1, "v1", "cronSpec"), (w2, "v2", "schedule")] {
        let evs = events(&w.text());
        let m = evs
            .iter()
            .find(|(t, o)| t == "MODIFIED" && o["metadata"]["name"] == "a")
            .unwrap_or_else(|| panic!("no MODIFIED for a in the {version} watch: {evs:?}"));
        assert_eq!(m.1["apiVersion"], format!("conv.example.com/{version}"));
        assert_eq!(m.1["spec"]["size"], 7);
        assert_eq!(m.1["spec"][field], "5 * * * *", "{:?}", m.1);
    }

    // A failing webhook: v2 requests get upstream's error; v1 needs no conversion.
    hook.state.fail.store(true, Ordering::SeqCst);
    let r = c.get(&format!("{V2}/a")).await;
    assert_eq!(r.status, 500, "{}", r.text());
    let st = r.json();
    assert_eq!(st["reason"], "InternalError");
    assert!(
        st["message"].as_str().unwrap().contains(
            "conversion webhook for conv.example.com/v1, Kind=Widget failed: refused by the test webhook"
        ),
        "{st}"
    );
    let r = c.get(V2).await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(
        r.text().contains("refused by the test webhook"),
        "{}",
        r.text()
    );
    let err = c.fails(&["get", "wd"], None);
    assert!(err.contains("refused by the test webhook"), "{err}");
    // A watch in v2 gets the failure as an ERROR event carrying the Status.
    let rv = c.get(V1).await.json()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let u = format!("{V2}?watch=true&resourceVersion={rv}&timeoutSeconds=2");
    let (w, p) = tokio::join!(c.get(&u), async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        merge_patch(&c, &format!("{V1}/a"), json!({"spec": {"size": 8}})).await
    });
    assert_eq!(p.status, 200, "{}", p.text());
    let evs = events(&w.text());
    let (_, st) = evs
        .iter()
        .find(|(t, _)| t == "ERROR")
        .unwrap_or_else(|| panic!("no ERROR event: {evs:?}"));
    assert_eq!(
        (st["kind"].as_str(), st["code"].as_i64()),
        (Some("Status"), Some(500))
    );
    assert!(
        st["message"]
            .as_str()
            .unwrap_or_default()
            .contains("refused by the test webhook"),
        "{st}"
    );
    let r = c
        .send_json(
            "POST",
            V2,
            &json!({"apiVersion": "conv.example.com/v2", "kind": "Widget",
                "metadata": {"name": "c"}, "spec": {"schedule": "1 * * * *"}}),
        )
        .await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(c.get(&format!("{V2}/c")).await.status, 404);
    assert_eq!(c.get(&format!("{V1}/a")).await.status, 200);
    assert_eq!(c.get(V1).await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_through_a_service_and_invalid_stanzas() {
    let hook = start_hook();
    let c = ApiCluster::start(StoreKind::Kelson, &[]).await.unwrap();
    let ca = base64::engine::general_purpose::STANDARD.encode(&hook.ca_pem);

    // Invalid stanzas: 422 with upstream's field paths.
    let causes = |r: &common::Resp| -> Vec<String> {
        r.json()["details"]["causes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                format!(
                    "{}: {}",
                    c["field"].as_str().unwrap(),
                    c["message"].as_str().unwrap()
                )
            })
            .collect()
    };
    let cr = &c;
    let post = |crd: Value| async move {
        cr.send_json(
            "POST",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            &crd,
        )
        .await
    };
    let mut bad = crd(json!({"url": "https://127.0.0.1:1/convert",
        "service": {"namespace": "default", "name": "conv"}}));
    bad["spec"]["conversion"]["webhook"]["conversionReviewVersions"] = json!([]);
    let r = post(bad).await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(
        causes(&r),
        vec![
            "spec.conversion.webhookClientConfig: Required value: exactly one of url or service is required",
            "spec.conversion.conversionReviewVersions: Required value",
        ]
    );
    let mut none = crd(json!({"url": "https://127.0.0.1:1/convert"}));
    none["spec"]["conversion"]["strategy"] = json!("None");
    let r = post(none).await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(
        causes(&r).contains(
            &"spec.conversion.webhookClientConfig: Forbidden: should not be set when strategy is not set to Webhook".to_string()
        ),
        "{:?}",
        causes(&r)
    );
    let r = post(crd(json!({"url": "http://127.0.0.1:1/convert"}))).await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(
        r.text().contains("'https' is the only allowed URL scheme"),
        "{}",
        r.text()
    );

    // A selectorless Service whose Endpoints point at the loopback webhook; the certificate
    // names conv.default.svc, which is what the server must verify.
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "conv"},
        "spec": {"ports": [{"name": "https", "port": 443, "targetPort": hook.port}]}});
    let r = c
        .send_json("POST", "/api/v1/namespaces/default/services", &svc)
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let eps = json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "conv"},
        "subsets": [{"addresses": [{"ip": "127.0.0.1"}], "ports": [{"name": "https", "port": hook.port}]}]});
    let r = c
        .send_json("POST", "/api/v1/namespaces/default/endpoints", &eps)
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let crd_obj = crd(
        json!({"service": {"namespace": "default", "name": "conv", "path": "/convert"},
        "caBundle": ca}),
    );
    install(&c, &crd_obj).await;
    let got = c
        .get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.conv.example.com")
        .await
        .json();
    assert_eq!(
        got["spec"]["conversion"]["webhook"]["clientConfig"]["service"]["port"], 443,
        "the service port defaults to 443"
    );
    let r = c
        .send_json(
            "POST",
            V2,
            &json!({"apiVersion": "conv.example.com/v2", "kind": "Widget",
                "metadata": {"name": "s"}, "spec": {"schedule": "2 * * * *"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(stored(&c, "s")["spec"]["cronSpec"], "2 * * * *");
    let o = c.get(&format!("{V1}/s")).await.json();
    assert_eq!(o["spec"]["cronSpec"], "2 * * * *");
    assert!(hook.state.calls.load(Ordering::SeqCst) >= 1);

    // A caBundle the webhook's certificate does not chain to: the TLS handshake fails.
    let other = Ca::generate("unrelated-ca").unwrap();
    let mut crd_obj = c
        .get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.conv.example.com")
        .await
        .json();
    crd_obj["spec"]["conversion"]["webhook"]["clientConfig"]["caBundle"] =
        json!(base64::engine::general_purpose::STANDARD.encode(other.cert_pem()));
    let r = c
        .send_json(
            "PUT",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.conv.example.com",
            &crd_obj,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    eventually(
        "the new caBundle to be used",
        Duration::from_secs(10),
        || async move { cr.get(&format!("{V2}/s")).await.status == 500 },
    )
    .await;
    let t = c.get(&format!("{V2}/s")).await.text();
    assert!(
        t.contains("conversion webhook for conv.example.com/v1, Kind=Widget failed: Post \\\"https://conv.default.svc:443/convert\\\""),
        "{t}"
    );
}
