//! `/openapi/v2` in gnostic protobuf, checked with the real kubectl 1.32, which asks for it
//! (protobuf only) whenever it validates on the client: a kind whose v3 document has no PATCH
//! (TokenReview) and a `v1 List` (`kubectl get ... -o json | kubectl replace -f -`). Without
//! the protobuf form kubectl failed with "failed to download openapi" unless given
//! `--validate=false`. Also: content negotiation, ETag/If-None-Match, the decoded document
//! matching the JSON one, and that server-side validation and `kubectl explain` still work.
//!
//! Needs `cargo build -p kelson-kv -p kelson-apiserver`.

use anyhow::{ensure, Context};
use http_body_util::BodyExt;
use kelson_apiserver::openapi_v2_proto::{pb, PROTOBUF, PROTOBUF_V1};
use kelson_testsupport::ControlPlane;
use prost::Message;
use serde_json::{json, Value};

/// `GET /openapi/v2` with the given headers: (status, content type, ETag, body).
async fn get(
    client: &kube::Client,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, String, String, Vec<u8>)> {
    let mut req = http::Request::get("/openapi/v2");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client.send(req.body(kube::client::Body::empty())?).await?;
    let header = |n: http::header::HeaderName| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (ct, etag) = (
        header(http::header::CONTENT_TYPE),
        header(http::header::ETAG),
    );
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes().to_vec();
    Ok((status, ct, etag, body))
}

#[tokio::test]
async fn protobuf_document_is_negotiated_cached_and_matches_json() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let client = cp.client().await?;

    let (code, ct, json_etag, json) = get(&client, &[("Accept", "application/json")]).await?;
    ensure!(code == 200 && ct == "application/json", "{code} {ct}");
    ensure!(!json_etag.is_empty(), "JSON form has no ETag");
    let json: Value = serde_json::from_slice(&json)?;

    let (code, ct, etag, body) = get(&client, &[("Accept", PROTOBUF)]).await?;
    ensure!(
        code == 200,
        "protobuf: {code}: {}",
        String::from_utf8_lossy(&body)
    );
    ensure!(ct == PROTOBUF_V1, "content type {ct}");
    ensure!(
        !etag.is_empty() && etag != json_etag,
        "protobuf ETag {etag:?}"
    );
    let doc = pb::Document::decode(body.as_slice()).context("decoding the protobuf form")?;
    ensure!(doc.swagger == "2.0");
    let paths = doc.paths.as_ref().context("no paths")?;
    ensure!(
        paths.path.len() == json["paths"].as_object().unwrap().len(),
        "paths: {} vs {}",
        paths.path.len(),
        json["paths"].as_object().unwrap().len()
    );
    let defs = doc.definitions.as_ref().context("no definitions")?;
    ensure!(defs.additional_properties.len() == json["definitions"].as_object().unwrap().len());
    let cm = defs
        .additional_properties
        .iter()
        .find(|d| d.name == "io.k8s.api.core.v1.ConfigMap")
        .and_then(|d| d.value.as_ref())
        .context("ConfigMap definition")?;
    let gvk = cm
        .vendor_extension
        .iter()
        .find(|e| e.name == "x-kubernetes-group-version-kind")
        .and_then(|e| e.value.as_ref())
        .context("ConfigMap GVK extension")?;
    let gvk: Value = serde_yaml::from_str(&gvk.yaml)?;
    ensure!(
        gvk == json!([{"group": "", "version": "v1", "kind": "ConfigMap"}]),
        "{gvk}"
    );

    // Revalidation: the same ETag again is 304 with no body; the older media type works too.
    let (code, _, etag2, body) =
        get(&client, &[("Accept", PROTOBUF), ("If-None-Match", &etag)]).await?;
    ensure!(
        code == 304 && body.is_empty() && etag2 == etag,
        "{code} {etag2}"
    );
    let (code, _, _, _) = get(
        &client,
        &[
            ("Accept", "application/json"),
            ("If-None-Match", &json_etag),
        ],
    )
    .await?;
    ensure!(code == 304, "JSON revalidation: {code}");
    let (code, ct, etag1, body1) = get(&client, &[("Accept", PROTOBUF_V1)]).await?;
    ensure!(
        code == 200 && ct == PROTOBUF_V1 && etag1 == etag,
        "{code} {ct}"
    );
    ensure!(
        body1.len() == doc.encoded_len(),
        "v1.0 media type: other bytes"
    );

    // A custom resource's definition joins the document: a new version, a new ETag.
    let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.stable.example.com"},
        "spec": {"group": "stable.example.com", "scope": "Namespaced",
          "names": {"plural": "widgets", "kind": "Widget"},
          "versions": [{"name": "v1", "served": true, "storage": true,
            "schema": {"openAPIV3Schema": {"type": "object", "properties": {
              "spec": {"type": "object", "properties": {"size": {"type": "integer"}}}}}}}]}});
    let out = cp.kubectl_stdin(&["create", "-f", "-"], Some(&crd.to_string()));
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let widget = loop {
        let (code, _, etag3, body) = get(&client, &[("Accept", PROTOBUF)]).await?;
        ensure!(code == 200, "{code}");
        let doc = pb::Document::decode(body.as_slice())?;
        let found = doc.definitions.as_ref().and_then(|d| {
            d.additional_properties
                .iter()
                .find(|d| d.name == "com.example.stable.v1.Widget")
                .and_then(|d| d.value.clone())
        });
        if let Some(w) = found {
            ensure!(etag3 != etag, "same ETag for another document");
            break w;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "Widget never appeared in /openapi/v2"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let spec = widget
        .properties
        .as_ref()
        .and_then(|p| p.additional_properties.iter().find(|p| p.name == "spec"))
        .and_then(|p| p.value.as_ref())
        .context("Widget spec")?;
    ensure!(
        spec.properties
            .as_ref()
            .is_some_and(|p| p.additional_properties[0].name == "size"),
        "{spec:?}"
    );

    // Nothing acceptable: 406 as a Status.
    let (code, _, _, body) = get(&client, &[("Accept", "application/xml")]).await?;
    let status: Value = serde_json::from_slice(&body)?;
    ensure!(
        code == 406 && status["reason"] == "NotAcceptable",
        "{code} {status}"
    );
    Ok(())
}

/// kubectl with `-v=6` so the test can see that it fetched `/openapi/v2` (and got a 200).
fn kubectl_v6(cp: &ControlPlane, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    let mut all = args.to_vec();
    all.push("-v=6");
    let out = cp.kubectl_stdin(&all, stdin);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        out.status.success(),
        "kubectl {args:?}: {stderr}\n--- apiserver log ---\n{}",
        cp.apiserver_log_tail(20)
    );
    ensure!(
        stderr
            .lines()
            .any(|l| l.contains("GET") && l.contains("/openapi/v2") && l.contains("200 OK")),
        "kubectl {args:?} did not fetch /openapi/v2 (the path under test): {stderr}"
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn kubectl_validates_on_the_client_with_the_protobuf_document() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;

    // TokenReview: v3 has no PATCH for it, so kubectl validates with v2 (no --validate=false).
    let tr = cp.dir().join("tokenreview.yaml");
    std::fs::write(
        &tr,
        "apiVersion: authentication.k8s.io/v1\nkind: TokenReview\nspec:\n  token: not-a-token\n",
    )?;
    let out = kubectl_v6(
        &cp,
        &["create", "-f", tr.to_str().unwrap(), "-o", "json"],
        None,
    )?;
    let review: Value = serde_json::from_str(&out)?;
    ensure!(review["status"]["authenticated"] != true, "{review}");

    // A v1 List round trip: get -o json | replace -f -.
    cp.kubectl_ok(&["create", "configmap", "a", "--from-literal=k=v"])?;
    cp.kubectl_ok(&["create", "configmap", "b", "--from-literal=k=w"])?;
    let list = cp.kubectl_ok(&["get", "cm", "a", "b", "-o", "json"])?;
    let out = kubectl_v6(&cp, &["replace", "-f", "-"], Some(&list))?;
    ensure!(
        out.contains("configmap/a replaced") && out.contains("configmap/b replaced"),
        "{out}"
    );

    // The client-side validation really reads the schemas: an unknown field in a List item
    // is refused by kubectl itself under --validate=strict.
    let bad = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "bogusField": 1}]});
    let out = cp.kubectl_stdin(
        &["create", "--validate=strict", "-f", "-"],
        Some(&bad.to_string()),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("bogusField"),
        "unknown field in a List accepted: {stderr}"
    );
    ensure!(
        !cp.kubectl(&["get", "cm", "c"]).status.success(),
        "configmap c was created despite the validation error"
    );

    // Server-side validation (a Pod's v3 document has PATCH): unknown field under Strict.
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}], "bogusSpecField": true}});
    let out = cp.kubectl_stdin(
        &["create", "--validate=strict", "-f", "-"],
        Some(&pod.to_string()),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("bogusSpecField"),
        "unknown Pod field accepted: {stderr}"
    );

    // explain still works (OpenAPI v3).
    let out = cp.kubectl_ok(&["explain", "pods.spec", "--api-version=v1"])?;
    ensure!(out.contains("containers"), "{out}");
    Ok(())
}
