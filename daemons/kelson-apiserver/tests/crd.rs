//! CustomResourceDefinitions with the real kubectl (and the Python client) as the judge.

mod common;

use std::time::{Duration, Instant};

use common::ApiCluster;
use kelson_testsupport::StoreKind;
use serde_json::{json, Value};

const CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: crontabs.stable.example.com
spec:
  group: stable.example.com
  scope: Namespaced
  names:
    plural: crontabs
    singular: crontab
    kind: CronTab
    shortNames: [ct]
    categories: [all]
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
      scale:
        specReplicasPath: .spec.replicas
        statusReplicasPath: .status.replicas
        labelSelectorPath: .status.labelSelector
    additionalPrinterColumns:
    - name: Spec
      type: string
      jsonPath: .spec.cronSpec
    - name: Replicas
      type: integer
      jsonPath: .spec.replicas
    - name: Age
      type: date
      jsonPath: .metadata.creationTimestamp
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            description: CronTabSpec is what the cron tab runs.
            required: [cronSpec]
            properties:
              cronSpec:
                type: string
                description: The schedule in cron format.
                pattern: '^(\d+|\*)(/\d+)?(\s+(\d+|\*)(/\d+)?){4}$'
              image:
                type: string
              replicas:
                type: integer
                minimum: 0
                maximum: 10
                default: 1
              mode:
                type: string
                enum: [fast, slow]
                default: slow
              extra:
                type: object
                x-kubernetes-preserve-unknown-fields: true
          status:
            type: object
            properties:
              replicas: {type: integer}
              labelSelector: {type: string}
"#;

const CR: &str = r#"apiVersion: stable.example.com/v1
kind: CronTab
metadata:
  name: my-cron
spec:
  cronSpec: "* * * * */5"
  image: my-cron-image
  bogus: dropped
  extra: {kept: {deep: true}}
"#;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// Polls (bounded) until `f` holds.
fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn crd_lifecycle_with_kubectl() {
    let c = ApiCluster::start(StoreKind::Kelson, &[]).await.unwrap();
    c.ok_in(&["create", "-f", "-"], CRD);
    c.ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=10s",
        "crd/crontabs.stable.example.com",
    ]);
    let crd = json(&c.ok(&["get", "crd", "crontabs.stable.example.com", "-o", "json"]));
    assert_eq!(
        crd["metadata"]["finalizers"],
        json!(["customresourcecleanup.apiextensions.k8s.io"])
    );
    assert_eq!(crd["status"]["acceptedNames"]["kind"], "CronTab");
    assert_eq!(crd["status"]["storedVersions"], json!(["v1"]));
    let conds = crd["status"]["conditions"].as_array().unwrap();
    for t in ["NamesAccepted", "Established"] {
        assert!(
            conds
                .iter()
                .any(|x| x["type"] == t && x["status"] == "True"),
            "{conds:?}"
        );
    }
    let res = c.ok(&["api-resources", "--api-group=stable.example.com"]);
    assert!(
        res.contains("crontabs") && res.contains("ct") && res.contains("CronTab"),
        "{res}"
    );

    // Create: unknown fields pruned (with a warning under --validate=warn), defaults applied.
    let out = c.kubectl_in(&["create", "--validate=warn", "-f", "-"], CR);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let warn = String::from_utf8_lossy(&out.stderr);
    assert!(warn.contains("unknown field \"spec.bogus\""), "{warn}");
    let o = json(&c.ok(&["get", "ct", "my-cron", "-o", "json"]));
    assert!(o["spec"].get("bogus").is_none(), "{o}");
    assert_eq!(o["spec"]["extra"], json!({"kept": {"deep": true}}));
    assert_eq!(o["spec"]["replicas"], 1);
    assert_eq!(o["spec"]["mode"], "slow");
    assert_eq!(o["metadata"]["generation"], 1);
    // Strict validation (kubectl's default) rejects the unknown field outright.
    let err = c.fails(
        &["create", "-f", "-"],
        Some(&CR.replace("my-cron", "strict-cron")),
    );
    assert!(err.contains("unknown field \"spec.bogus\""), "{err}");

    // kubectl get by short name shows the printer columns; `get all` includes the category.
    let table = c.ok(&["get", "ct"]);
    let header = table.lines().next().unwrap();
    for col in ["NAME", "SPEC", "REPLICAS", "AGE"] {
        assert!(header.contains(col), "{table}");
    }
    assert!(
        table.contains("my-cron") && table.contains("* * * * */5"),
        "{table}"
    );
    let all = c.ok(&["get", "all"]);
    assert!(all.contains("crontab.stable.example.com/my-cron"), "{all}");

    // Merge patch bumps generation; strategic merge is 415 for custom resources.
    c.ok(&[
        "patch",
        "ct",
        "my-cron",
        "--type=merge",
        "-p",
        r#"{"spec":{"image":"v2"}}"#,
    ]);
    let o = json(&c.ok(&["get", "ct", "my-cron", "-o", "json"]));
    assert_eq!(
        (
            o["spec"]["image"].as_str(),
            o["metadata"]["generation"].as_i64()
        ),
        (Some("v2"), Some(2))
    );
    let r = c
        .request(
            Some("admin"),
            "PATCH",
            "/apis/stable.example.com/v1/namespaces/default/crontabs/my-cron",
            &[("content-type", "application/strategic-merge-patch+json")],
            br#"{"spec":{"image":"v3"}}"#.to_vec(),
        )
        .await;
    assert_eq!(r.status, 415, "{}", r.text());

    // Scale subresource by the CRD's paths.
    c.ok(&["scale", "ct", "my-cron", "--replicas=3"]);
    let o = json(&c.ok(&["get", "ct", "my-cron", "-o", "json"]));
    assert_eq!(o["spec"]["replicas"], 3);
    let base = "/apis/stable.example.com/v1/namespaces/default/crontabs/my-cron";
    let sc = c.get(&format!("{base}/scale")).await.json();
    assert_eq!(
        (sc["kind"].as_str(), sc["spec"]["replicas"].as_i64()),
        (Some("Scale"), Some(3))
    );

    // Status subresource: status writes leave spec alone and main-resource writes leave status.
    let mut st = o.clone();
    st["status"] = json!({"replicas": 3, "labelSelector": "app=cron"});
    st["spec"]["image"] = json!("ignored");
    let r = c.send_json("PUT", &format!("{base}/status"), &st).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let o = c.get(base).await.json();
    assert_eq!(o["status"]["replicas"], 3);
    assert_eq!(o["spec"]["image"], "v2");
    let gen = o["metadata"]["generation"].clone();
    let mut upd = o.clone();
    upd["status"] = json!({"replicas": 99});
    upd["spec"]["image"] = json!("v4");
    let r = c.send_json("PUT", base, &upd).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let o = c.get(base).await.json();
    assert_eq!(
        (
            o["status"]["replicas"].as_i64(),
            o["spec"]["image"].as_str()
        ),
        (Some(3), Some("v4"))
    );
    assert_eq!(
        o["metadata"]["generation"].as_i64(),
        gen.as_i64().map(|g| g + 1)
    );
    let sc = c.get(&format!("{base}/scale")).await.json();
    assert_eq!(sc["status"], json!({"replicas": 3, "selector": "app=cron"}));

    // Invalid custom resources: 422 with field causes.
    let bad = json!({"apiVersion": "stable.example.com/v1", "kind": "CronTab",
        "metadata": {"name": "bad"}, "spec": {"cronSpec": 5, "replicas": 11, "mode": "medium"}});
    let r = c
        .send_json(
            "POST",
            "/apis/stable.example.com/v1/namespaces/default/crontabs",
            &bad,
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text());
    let st = r.json();
    assert_eq!(st["reason"], "Invalid");
    let causes: Vec<(String, String)> = st["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["field"].as_str().unwrap().to_string(),
                c["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for want in [
        ("spec.cronSpec", "FieldValueTypeInvalid"),
        ("spec.replicas", "FieldValueInvalid"),
        ("spec.mode", "FieldValueNotSupported"),
    ] {
        assert!(
            causes.contains(&(want.0.into(), want.1.into())),
            "{causes:?}"
        );
    }
    let err = c.fails(
        &["create", "-f", "-"],
        Some("apiVersion: stable.example.com/v1\nkind: CronTab\nmetadata: {name: nospec}\nspec: {image: x}\n"),
    );
    assert!(err.contains("spec.cronSpec: Required value"), "{err}");

    // Watch with a field selector sees the custom resource.
    let r = c
        .get("/apis/stable.example.com/v1/namespaces/default/crontabs?fieldSelector=metadata.name%3Dmy-cron")
        .await
        .json();
    assert_eq!(r["kind"], "CronTabList");
    assert_eq!(r["items"].as_array().map(Vec::len), Some(1));

    // OpenAPI: kubectl explain reads the schema; v2 carries the definition too.
    let ex = c.ok(&["explain", "crontabs.spec.cronSpec"]);
    assert!(ex.contains("The schedule in cron format."), "{ex}");
    let v2 = c.get("/openapi/v2").await.json();
    assert!(v2["definitions"]["com.example.stable.v1.CronTab"].is_object());

    // Deleting the CRD deletes its instances, then the CRD; the endpoints stop serving.
    c.ok(&[
        "delete",
        "crd",
        "crontabs.stable.example.com",
        "--timeout=20s",
    ]);
    let r = c
        .get("/apis/stable.example.com/v1/namespaces/default/crontabs")
        .await;
    assert_eq!(r.status, 404, "{}", r.text());
    let err = c.fails(&["get", "ct"], None);
    // kubectl's cached discovery may still map the short name: then the list itself 404s.
    assert!(
        err.contains("the server doesn't have a resource type")
            || err.contains("the server could not find the requested resource"),
        "{err}"
    );
    // Recreated, it starts empty: the old instances were deleted from the store.
    c.ok_in(&["create", "-f", "-"], CRD);
    c.ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=10s",
        "crd/crontabs.stable.example.com",
    ]);
    eventually(
        "the recreated resource to be served",
        Duration::from_secs(5),
        || c.kubectl(&["get", "crontabs"]).status.success(),
    );
    let l = json(&c.ok(&["get", "crontabs", "-A", "-o", "json"]));
    assert_eq!(l["items"], json!([]), "{l}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_crds_rejected_and_python_client() {
    let c = ApiCluster::start(StoreKind::Kelson, &[]).await.unwrap();
    // A non-structural schema: a property without a type.
    let non_structural = CRD.replace(
        "              image:\n                type: string\n",
        "              image:\n                description: no type\n",
    );
    let err = c.fails(&["create", "-f", "-"], Some(&non_structural));
    assert!(
        err.contains("spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[image].type: Required value: must not be empty for specified object fields"),
        "{err}"
    );
    let r = c
        .send_json(
            "POST",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            &json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                "metadata": {"name": "wrong.example.com"},
                "spec": {"group": "example.com", "scope": "Cluster",
                  "names": {"plural": "things", "kind": "Thing"},
                  "versions": [{"name": "v1", "served": true, "storage": false,
                    "schema": {"openAPIV3Schema": {"type": "object"}}}]}}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text());
    let fields: Vec<Value> = r.json()["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].clone())
        .collect();
    assert!(
        fields.contains(&json!("metadata.name")) && fields.contains(&json!("spec.versions")),
        "{fields:?}"
    );

    // A cluster-scoped CRD driven from the Python client's CustomObjectsApi.
    let crd = CRD
        .replace("scope: Namespaced", "scope: Cluster")
        .replace("shortNames: [ct]", "shortNames: [pyct]");
    c.ok_in(&["create", "-f", "-"], &crd);
    c.ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=10s",
        "crd/crontabs.stable.example.com",
    ]);
    let script = r#"
import json, sys
from kubernetes import config, client
api = client.CustomObjectsApi(config.new_client_from_config(sys.argv[1]))
body = {"apiVersion": "stable.example.com/v1", "kind": "CronTab", "metadata": {"name": "py"},
        "spec": {"cronSpec": "*/5 * * * *"}}
api.create_cluster_custom_object("stable.example.com", "v1", "crontabs", body)
items = api.list_cluster_custom_object("stable.example.com", "v1", "crontabs")["items"]
try:
    api.create_cluster_custom_object("stable.example.com", "v1", "crontabs",
        {"apiVersion": "stable.example.com/v1", "kind": "CronTab", "metadata": {"name": "bad"}, "spec": {}})
    code = None
except client.ApiException as e:
    code = e.status
print(json.dumps({"names": [i["metadata"]["name"] for i in items], "replicas": items[0]["spec"]["replicas"], "bad": code}))
"#;
    let v = c.python(script);
    assert_eq!(v, json!({"names": ["py"], "replicas": 1, "bad": 422}));
}
