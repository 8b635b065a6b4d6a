//! Server-side apply through the real kubectl and the Python `kubernetes` client, and the
//! managedFields every write records.

mod common;

use common::ApiCluster;
use kelson_testsupport::StoreKind;
use serde_json::{json, Value};

fn deployment(replicas: u32, image: &str, extra_label: bool) -> String {
    let label = if extra_label { "\n    tier: front" } else { "" };
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels:
    app: web{label}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
      - name: main
        image: {image}
        ports:
        - containerPort: 80
"#
    )
}

fn get(c: &ApiCluster, what: &str) -> Value {
    let s = c.ok(&["get", what, "-o", "json", "--show-managed-fields"]);
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// The managedFields entry of `manager` (and operation).
fn entry<'a>(obj: &'a Value, manager: &str, op: &str) -> Option<&'a Value> {
    obj["metadata"]["managedFields"]
        .as_array()?
        .iter()
        .find(|e| e["manager"] == manager && e["operation"] == op)
}

fn rv(obj: &Value) -> String {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_server_side_apply() {
    let c = ApiCluster::start(StoreKind::Kelson, &[]).await.unwrap();
    let ssa = ["apply", "--server-side", "-f", "-"];

    // Create.
    let out = c.ok_in(&ssa, &deployment(2, "busybox:1", true));
    assert!(out.contains("serverside-applied"), "{out}");
    let d = get(&c, "deployment/web");
    assert_eq!(d["spec"]["replicas"], 2);
    let e = entry(&d, "kubectl", "Apply").unwrap_or_else(|| panic!("no kubectl Apply entry: {d}"));
    assert_eq!(e["apiVersion"], "apps/v1");
    assert_eq!(e["fieldsType"], "FieldsV1");
    assert!(e["time"].is_string());
    let f = &e["fieldsV1"];
    assert_eq!(f["f:spec"]["f:replicas"], json!({}), "{f}");
    assert_eq!(f["f:metadata"]["f:labels"]["f:tier"], json!({}), "{f}");
    let main = &f["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"main\"}"];
    assert_eq!(main["."], json!({}), "{f}");
    assert!(
        main["f:ports"]["k:{\"containerPort\":80,\"protocol\":\"TCP\"}"].is_object(),
        "{f}"
    );
    assert!(
        f["f:metadata"].get("f:name").is_none(),
        "server-owned metadata is not owned: {f}"
    );
    assert!(f.get("f:status").is_none());

    // `kubectl get -o yaml --show-managed-fields` shows it; without the flag it is hidden.
    let y = c.ok(&[
        "get",
        "deployment/web",
        "-o",
        "yaml",
        "--show-managed-fields",
    ]);
    assert!(
        y.contains("managedFields:")
            && y.contains("manager: kubectl")
            && y.contains("operation: Apply"),
        "{y}"
    );
    assert!(!c
        .ok(&["get", "deployment/web", "-o", "yaml"])
        .contains("managedFields"));

    // Re-applying the same configuration writes nothing.
    let before = rv(&d);
    c.ok_in(&ssa, &deployment(2, "busybox:1", true));
    let d = get(&c, "deployment/web");
    assert_eq!(rv(&d), before, "an unchanged apply must not write");

    // A changed field.
    c.ok_in(&ssa, &deployment(2, "busybox:2", true));
    let d = get(&c, "deployment/web");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "busybox:2"
    );
    assert_ne!(rv(&d), before);

    // Another manager changing the replicas: 409 naming kubectl and the field.
    let other = ["apply", "--server-side", "--field-manager=ops", "-f", "-"];
    let scale =
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 5\n";
    let err = c.fails(&other, Some(scale));
    assert!(
        err.contains("Apply failed with 1 conflict: conflict with \"kubectl\": .spec.replicas"),
        "{err}"
    );
    let raw = c
        .request(
            Some("admin"),
            "PATCH",
            "/apis/apps/v1/namespaces/default/deployments/web?fieldManager=ops",
            &[("content-type", "application/apply-patch+yaml")],
            scale.as_bytes().to_vec(),
        )
        .await;
    assert_eq!(raw.status, 409, "{}", raw.text());
    let st = raw.json();
    assert_eq!(st["reason"], "Conflict");
    assert_eq!(st["details"]["causes"][0]["reason"], "FieldManagerConflict");
    assert_eq!(st["details"]["causes"][0]["field"], ".spec.replicas");
    assert_eq!(
        st["details"]["causes"][0]["message"],
        "conflict with \"kubectl\""
    );

    // dryRun: the forced apply is answered but not stored.
    let dry = c.ok_in(
        &[
            "apply",
            "--server-side",
            "--field-manager=ops",
            "--force-conflicts",
            "--dry-run=server",
            "-o",
            "json",
            "-f",
            "-",
        ],
        scale,
    );
    assert!(dry.contains("\"replicas\": 5"), "{dry}");
    assert_eq!(get(&c, "deployment/web")["spec"]["replicas"], 2);

    // --force-conflicts takes ownership.
    c.ok_in(
        &[
            "apply",
            "--server-side",
            "--field-manager=ops",
            "--force-conflicts",
            "-f",
            "-",
        ],
        scale,
    );
    let d = get(&c, "deployment/web");
    assert_eq!(d["spec"]["replicas"], 5);
    let ops = entry(&d, "ops", "Apply").unwrap();
    assert_eq!(ops["fieldsV1"]["f:spec"]["f:replicas"], json!({}));
    let k = entry(&d, "kubectl", "Apply").unwrap();
    assert!(k["fieldsV1"]["f:spec"].get("f:replicas").is_none(), "{k}");

    // Removing a field from the applied configuration removes it from the object.
    c.ok_in(
        &ssa,
        &deployment(5, "busybox:2", false).replace("  replicas: 5\n", ""),
    );
    let d = get(&c, "deployment/web");
    assert!(
        d["metadata"]["labels"].get("tier").is_none(),
        "{}",
        d["metadata"]
    );
    assert_eq!(d["metadata"]["labels"]["app"], "web");
    assert_eq!(d["spec"]["replicas"], 5, "ops still owns the replicas");

    // A second manager adds a container: the list merges by name, each owns its own.
    let sidecar = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  template:
    spec:
      containers:
      - name: sidecar
        image: busybox:1
"#;
    c.ok_in(
        &["apply", "--server-side", "--field-manager=mesh", "-f", "-"],
        sidecar,
    );
    let d = get(&c, "deployment/web");
    let names: Vec<&str> = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["main", "sidecar"]);
    let mesh = entry(&d, "mesh", "Apply").unwrap();
    assert!(
        mesh["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"]
            ["k:{\"name\":\"sidecar\"}"]
            .is_object()
    );
    // kubectl's re-apply (without the sidecar) keeps mesh's container.
    c.ok_in(
        &ssa,
        &deployment(5, "busybox:3", false).replace("  replicas: 5\n", ""),
    );
    let d = get(&c, "deployment/web");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "busybox:3"
    );

    // An ordinary update records an Update entry for its manager.
    c.ok(&["label", "deployment/web", "team=a"]);
    let d = get(&c, "deployment/web");
    let lbl = entry(&d, "kubectl-label", "Update")
        .unwrap_or_else(|| panic!("{}", d["metadata"]["managedFields"]));
    assert_eq!(lbl["apiVersion"], "apps/v1");
    assert_eq!(
        lbl["fieldsV1"]["f:metadata"]["f:labels"]["f:team"],
        json!({})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_side_applied_and_created_objects() {
    let c = ApiCluster::start(StoreKind::Kelson, &[]).await.unwrap();

    // Client-side apply, then server-side apply with a change: kubectl upgrades the object.
    c.ok_in(&["apply", "-f", "-"], &deployment(2, "busybox:1", true));
    let d = get(&c, "deployment/web");
    assert!(
        entry(&d, "kubectl-client-side-apply", "Update").is_some(),
        "{}",
        d["metadata"]["managedFields"]
    );
    let out = c.ok_in(
        &["apply", "--server-side", "-f", "-"],
        &deployment(3, "busybox:1", true),
    );
    assert!(out.contains("serverside-applied"), "{out}");
    let d = get(&c, "deployment/web");
    assert_eq!(d["spec"]["replicas"], 3);
    let mf = &d["metadata"]["managedFields"];
    assert!(entry(&d, "kubectl", "Apply").is_some(), "{mf}");
    assert!(
        entry(&d, "kubectl-client-side-apply", "Update").is_none(),
        "kubectl migrated the client-side-apply entry: {mf}"
    );
    // After the upgrade, dropping a field removes it (the applier owns it now).
    c.ok_in(
        &["apply", "--server-side", "-f", "-"],
        &deployment(3, "busybox:1", false),
    );
    let d = get(&c, "deployment/web");
    assert!(
        d["metadata"]["labels"].get("tier").is_none(),
        "{}",
        d["metadata"]
    );

    // `kubectl create` owns what it created: another value conflicts with kubectl-create.
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg\ndata:\n  a: \"1\"\n";
    c.ok_in(&["create", "-f", "-"], cm);
    let m = get(&c, "configmap/cfg");
    assert!(
        entry(&m, "kubectl-create", "Update").is_some(),
        "{}",
        m["metadata"]
    );
    let err = c.fails(
        &["apply", "--server-side", "-f", "-"],
        Some(&cm.replace("\"1\"", "\"2\"")),
    );
    assert!(
        err.contains("conflict with \"kubectl-create\" using v1: .data.a"),
        "{err}"
    );
    c.ok_in(&["apply", "--server-side", "-f", "-"], cm);
    let m = get(&c, "configmap/cfg");
    assert!(
        entry(&m, "kubectl", "Apply").is_some(),
        "the same value is shared: {}",
        m["metadata"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_requests_and_managed_fields_over_http() {
    let c = ApiCluster::start(StoreKind::Kelson, &[]).await.unwrap();
    let path = "/api/v1/namespaces/default/configmaps/c1";
    let apply = |q: &'static str, body: &'static str| {
        let c = &c;
        async move {
            c.request(
                Some("admin"),
                "PATCH",
                &format!("{path}{q}"),
                &[("content-type", "application/apply-patch+yaml")],
                body.as_bytes().to_vec(),
            )
            .await
        }
    };
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c1}\ndata: {a: x}\n";
    let r = apply("", cm).await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("fieldManager: Required value"),
        "{}",
        r.text()
    );
    let r = apply("?fieldManager=t", "metadata: {name: c1}\ndata: {a: x}\n").await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("invalid object type"), "{}", r.text());
    let r = apply("?fieldManager=t&dryRun=All", cm).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(c.get(path).await.status, 404, "dry run stores nothing");
    // JSON is YAML.
    let r = apply(
        "?fieldManager=t",
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c1"},"data":{"a":"x"}}"#,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = apply(
        "?fieldManager=t&fieldValidation=Strict",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c1}\nbogus: 1\n",
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("unknown field \\\"bogus\\\""),
        "{}",
        r.text()
    );
    let r = apply(
        "?fieldManager=t",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c1, managedFields: []}\n",
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    // force is for apply only.
    let r = c
        .request(
            Some("admin"),
            "PATCH",
            &format!("{path}?force=true"),
            &[("content-type", "application/merge-patch+json")],
            br#"{"data":{"b":"y"}}"#.to_vec(),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text());

    // A merge patch with a User-Agent and no fieldManager: the agent's prefix is the manager.
    let r = c
        .request(
            Some("admin"),
            "PATCH",
            path,
            &[
                ("content-type", "application/merge-patch+json"),
                ("user-agent", "robot/1.0 (x)"),
            ],
            br#"{"data":{"b":"y"}}"#.to_vec(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let o = r.json();
    assert_eq!(
        entry(&o, "robot", "Update").unwrap()["fieldsV1"],
        json!({"f:data": {"f:b": {}}})
    );
    assert_eq!(
        entry(&o, "t", "Apply").unwrap()["fieldsV1"],
        json!({"f:data": {"f:a": {}}})
    );

    // managedFields in a request: invalid operation is 422, [] resets, a JSON patch sets them.
    let bad = json!([{"op": "replace", "path": "/metadata/managedFields",
        "value": [{"manager": "x", "operation": "Steal", "fieldsType": "FieldsV1", "fieldsV1": {}}]}]);
    let r = c
        .request(
            Some("admin"),
            "PATCH",
            path,
            &[("content-type", "application/json-patch+json")],
            bad.to_string().into_bytes(),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text());
    let set = json!([{"op": "replace", "path": "/metadata/managedFields",
        "value": [{"manager": "mine", "operation": "Apply", "apiVersion": "v1", "fieldsType": "FieldsV1",
                   "fieldsV1": {"f:data": {"f:a": {}, "f:b": {}}}}]}]);
    let r = c
        .request(
            Some("admin"),
            "PATCH",
            path,
            &[("content-type", "application/json-patch+json")],
            set.to_string().into_bytes(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mf = &r.json()["metadata"]["managedFields"];
    assert_eq!(mf.as_array().unwrap().len(), 1, "{mf}");
    assert_eq!(mf[0]["manager"], "mine");
    let r = c
        .request(
            Some("admin"),
            "PATCH",
            path,
            &[("content-type", "application/merge-patch+json")],
            br#"{"metadata":{"managedFields":[]}}"#.to_vec(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.json()["metadata"].get("managedFields").is_none(),
        "{}",
        r.text()
    );
    // Objects without managedFields keep working: an apply then starts from before-first-apply.
    let r = apply("?fieldManager=t", cm).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let o = r.json();
    assert!(
        entry(&o, "before-first-apply", "Update").is_some(),
        "{}",
        o["metadata"]
    );
    assert_eq!(o["data"], json!({"a": "x", "b": "y"}));
}

#[tokio::test(flavor = "multi_thread")]
async fn python_client_server_side_apply() {
    let c = ApiCluster::start(StoreKind::Kelson, &[]).await.unwrap();
    let script = r#"
import json, sys
from kubernetes import config, dynamic, client
api = client.ApiClient(config.new_client_from_config(sys.argv[1]).configuration)
dyn = dynamic.DynamicClient(api)
cms = dyn.resources.get(api_version="v1", kind="ConfigMap")
body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "py", "namespace": "default"},
        "data": {"k": "v"}}
o = cms.server_side_apply(body=body, field_manager="py-ssa", namespace="default")
o = cms.server_side_apply(body=dict(body, data={"k": "v2"}), field_manager="py-ssa", namespace="default")
try:
    cms.server_side_apply(body=dict(body, data={"k": "v3"}), field_manager="other", namespace="default")
    print(json.dumps({"conflict": None}))
except Exception as e:
    print(json.dumps({"conflict": e.status, "data": o.to_dict()["data"],
                      "managers": [m["manager"] for m in o.to_dict()["metadata"]["managedFields"]]}))
"#;
    let v = c.python(script);
    assert_eq!(v["conflict"], 409, "{v}");
    assert_eq!(v["data"], json!({"k": "v2"}));
    assert_eq!(v["managers"], json!(["py-ssa"]));
}
