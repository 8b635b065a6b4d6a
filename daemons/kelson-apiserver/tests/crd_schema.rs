//! Structural schemas of custom resources in depth: the status subresource validated against
//! the status part of the schema (422 with field causes, pruning and defaults), status left
//! alone by main-resource writes, defaults of nested objects and list items, pruning around
//! `x-kubernetes-preserve-unknown-fields`, and `kubectl explain` of nested fields.

mod common;

use std::time::{Duration, Instant};

use common::{ApiCluster, Resp};
use kelson_testsupport::StoreKind;
use serde_json::{json, Value};

const BASE: &str = "/apis/schema.example.com/v1/namespaces/default/gadgets";

const CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.schema.example.com
spec:
  group: schema.example.com
  scope: Namespaced
  names: {plural: gadgets, singular: gadget, kind: Gadget, shortNames: [gd]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              items:
                type: array
                description: The gadget's parts.
                items:
                  type: object
                  required: [name]
                  properties:
                    name: {type: string}
                    weight: {type: integer, default: 5, description: How heavy the part is.}
                    opts:
                      type: object
                      default: {}
                      properties:
                        mode: {type: string, default: auto}
              tls:
                type: object
                default: {}
                properties:
                  enabled: {type: boolean, default: true}
                  ciphers: {type: array, items: {type: string}, default: [aes]}
              raw:
                type: object
                x-kubernetes-preserve-unknown-fields: true
                properties:
                  known: {type: integer}
                  nested:
                    type: object
                    properties:
                      kept: {type: string}
              plugins:
                type: array
                items:
                  type: object
                  x-kubernetes-preserve-unknown-fields: true
              strict:
                type: object
                properties:
                  a: {type: string}
          status:
            type: object
            properties:
              replicas: {type: integer, minimum: 0}
              phase: {type: string, enum: [Pending, Ready]}
              observed: {type: boolean, default: false}
              conditions:
                type: array
                items:
                  type: object
                  required: [type]
                  properties:
                    type: {type: string}
                    status: {type: string}
"#;

/// Polls (bounded) until `f` holds.
fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn causes(r: &Resp) -> Vec<(String, String)> {
    r.json()["details"]["causes"]
        .as_array()
        .unwrap_or_else(|| panic!("no causes: {}", r.text()))
        .iter()
        .map(|c| {
            (
                c["field"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

async fn merge_patch(c: &ApiCluster, path: &str, patch: Value) -> Resp {
    c.request(
        Some("admin"),
        "PATCH",
        path,
        &[("content-type", "application/merge-patch+json")],
        patch.to_string().into_bytes(),
    )
    .await
}

async fn setup() -> ApiCluster {
    let c = ApiCluster::start(StoreKind::Kelson, &[]).await.unwrap();
    c.ok_in(&["create", "-f", "-"], CRD);
    c.ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=10s",
        "crd/gadgets.schema.example.com",
    ]);
    eventually("gadgets served", Duration::from_secs(10), || {
        c.kubectl(&["get", "gadgets"]).status.success()
    });
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn status_subresource_is_validated_against_the_status_schema() {
    let c = setup().await;
    let g = json!({"apiVersion": "schema.example.com/v1", "kind": "Gadget",
        "metadata": {"name": "g"}, "spec": {}, "status": {"replicas": 3}});
    let r = c.send_json("POST", BASE, &g).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(
        r.json().get("status").is_none(),
        "status is dropped on create: {}",
        r.text()
    );
    let status = format!("{BASE}/g/status");

    // Wrong types, values outside enum/minimum, a list item without its required field: 422.
    let mut o = c.get(&format!("{BASE}/g")).await.json();
    o["status"] = json!({"replicas": "three", "phase": "Gone", "conditions": [{"status": "True"}]});
    let r = c.send_json("PUT", &status, &o).await;
    assert_eq!(r.status, 422, "{}", r.text());
    let st = r.json();
    assert_eq!(st["reason"], "Invalid");
    assert!(
        st["message"]
            .as_str()
            .unwrap()
            .starts_with("Gadget.schema.example.com \"g\" is invalid: "),
        "{st}"
    );
    let got = causes(&r);
    for want in [
        ("status.replicas", "FieldValueTypeInvalid"),
        ("status.phase", "FieldValueNotSupported"),
        ("status.conditions[0].type", "FieldValueRequired"),
    ] {
        assert!(got.contains(&(want.0.into(), want.1.into())), "{got:?}");
    }
    let r = merge_patch(&c, &status, json!({"status": {"replicas": -1}})).await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(
        causes(&r),
        vec![(
            "status.replicas".to_string(),
            "FieldValueInvalid".to_string()
        )]
    );
    assert!(
        r.text()
            .contains("status.replicas in body should be greater than or equal to 0"),
        "{}",
        r.text()
    );
    // kubectl's --subresource=status sees the same error.
    let err = c.fails(
        &[
            "patch",
            "gd",
            "g",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Gone"}}"#,
        ],
        None,
    );
    assert!(
        err.contains("status.phase: Unsupported value: \"Gone\""),
        "{err}"
    );

    // A valid status: unknown fields pruned, defaults filled in, spec untouched.
    let r = merge_patch(
        &c,
        &status,
        json!({"spec": {"tls": {"enabled": false}}, "status": {"replicas": 2, "phase": "Ready", "bogus": 1}}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let o = c.get(&format!("{BASE}/g")).await.json();
    assert_eq!(
        o["status"],
        json!({"replicas": 2, "phase": "Ready", "observed": false})
    );
    assert_eq!(
        o["spec"]["tls"]["enabled"], true,
        "status writes leave spec alone"
    );

    // Main-resource writes leave status alone (PUT and merge patch).
    let mut upd = o.clone();
    upd["status"] = json!({"replicas": 99});
    let r = c.send_json("PUT", &format!("{BASE}/g"), &upd).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = merge_patch(
        &c,
        &format!("{BASE}/g"),
        json!({"status": {"phase": "Pending"}}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let o = c.get(&format!("{BASE}/g")).await.json();
    assert_eq!(o["status"]["replicas"], 2);
    assert_eq!(o["status"]["phase"], "Ready");
}

#[tokio::test(flavor = "multi_thread")]
async fn nested_defaults_pruning_and_explain() {
    let c = setup().await;
    let g = json!({"apiVersion": "schema.example.com/v1", "kind": "Gadget",
    "metadata": {"name": "n"},
    "spec": {
        "items": [{"name": "a"}, {"name": "b", "weight": 2, "opts": {"mode": "manual", "junk": 1}}],
        "raw": {"known": 1, "anything": {"deep": [1, 2]}, "nested": {"kept": "x", "dropped": true}},
        "plugins": [{"kind": "p", "config": {"x": 1}}],
        "strict": {"a": "x", "b": "dropped"}
    }});
    let r = c
        .request(
            Some("admin"),
            "POST",
            &format!("{BASE}?fieldValidation=Ignore"),
            &[("content-type", "application/json")],
            g.to_string().into_bytes(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let o = c.get(&format!("{BASE}/n")).await.json();
    let spec = &o["spec"];
    // Defaults inside list items, in a defaulted nested object, and of absent objects.
    assert_eq!(
        spec["items"],
        json!([{"name": "a", "weight": 5, "opts": {"mode": "auto"}},
               {"name": "b", "weight": 2, "opts": {"mode": "manual"}}])
    );
    assert_eq!(spec["tls"], json!({"enabled": true, "ciphers": ["aes"]}));
    // preserve-unknown-fields keeps unknown fields at its level but prunes below declared
    // properties that do not preserve them.
    assert_eq!(
        spec["raw"],
        json!({"known": 1, "anything": {"deep": [1, 2]}, "nested": {"kept": "x"}})
    );
    assert_eq!(spec["plugins"], json!([{"kind": "p", "config": {"x": 1}}]));
    assert_eq!(spec["strict"], json!({"a": "x"}));
    // Types are still checked under preserve-unknown-fields.
    let bad = json!({"apiVersion": "schema.example.com/v1", "kind": "Gadget",
        "metadata": {"name": "bad"}, "spec": {"raw": {"known": "one"}, "items": [{"weight": 1}]}});
    let r = c.send_json("POST", BASE, &bad).await;
    assert_eq!(r.status, 422, "{}", r.text());
    let got = causes(&r);
    for want in [
        ("spec.raw.known", "FieldValueTypeInvalid"),
        ("spec.items[0].name", "FieldValueRequired"),
    ] {
        assert!(got.contains(&(want.0.into(), want.1.into())), "{got:?}");
    }
    // Strict field validation names the pruned fields, nested ones included.
    let r = c
        .request(
            Some("admin"),
            "POST",
            &format!("{BASE}?fieldValidation=Strict"),
            &[("content-type", "application/json")],
            g.to_string().replace("\"n\"", "\"strict\"").into_bytes(),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    for f in [
        "spec.items[1].opts.junk",
        "spec.raw.nested.dropped",
        "spec.strict.b",
    ] {
        assert!(
            r.text().contains(&format!("unknown field \\\"{f}\\\"")),
            "{f}: {}",
            r.text()
        );
    }

    // kubectl explain reads the published schema down to list items.
    let ex = c.ok(&["explain", "gadgets.spec.items.weight"]);
    assert!(ex.contains("How heavy the part is."), "{ex}");
    let ex = c.ok(&["explain", "gadgets.spec.items"]);
    assert!(ex.contains("The gadget's parts."), "{ex}");
    let v3 = c.get("/openapi/v3/apis/schema.example.com/v1").await.json();
    let def = &v3["components"]["schemas"]["com.example.schema.v1.Gadget"];
    assert_eq!(
        def["properties"]["spec"]["properties"]["items"]["items"]["properties"]["weight"]
            ["default"],
        5,
        "{def}"
    );
}
