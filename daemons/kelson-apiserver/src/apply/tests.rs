//! Unit tests of field sets, comparison, merge and the managers' bookkeeping.

use serde_json::{json, Value};

use super::fieldset::{path_string, Set};
use super::managed::{Managers, Writer};
use super::typed::{self, Ty};
use super::*;

const DEPLOYMENT: &str = "io.k8s.api.apps.v1.Deployment";

fn deployment(replicas: i64, containers: Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": containers}}}})
}

fn fm(manager: &str) -> FieldManager {
    let info = crate::registry::lookup("apps", "v1", "deployments").unwrap();
    let mut q = HashMap::new();
    q.insert("fieldManager".to_string(), manager.to_string());
    FieldManager::for_request(info, &q, &HeaderMap::new(), "", Options::Apply).unwrap()
}

fn entries(obj: &Value) -> Managers {
    Managers::decode(&obj["metadata"]["managedFields"]).unwrap()
}

fn paths_of(m: &Managers, manager: &str) -> Vec<String> {
    m.0.iter()
        .find(|e| e.manager == manager)
        .map(|e| e.set.paths().iter().map(|p| path_string(p)).collect())
        .unwrap_or_default()
}

#[test]
fn field_set_follows_the_schema() {
    let d = deployment(
        2,
        json!([{"name": "app", "image": "busybox", "args": ["a", "b"],
                "ports": [{"containerPort": 80}]}]),
    );
    let s = typed::field_set(&d, Ty::root(DEPLOYMENT));
    let fields = s.to_fields_v1();
    let c = &fields["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"app\"}"];
    assert_eq!(c["."], json!({}), "list-map items are members: {c}");
    assert_eq!(c["f:args"], json!({}), "args is atomic");
    assert!(
        c["f:ports"]["k:{\"containerPort\":80,\"protocol\":\"TCP\"}"].is_object(),
        "the defaulted protocol completes the port key: {c}"
    );
    // The selector is an atomic LabelSelector; labels are a granular map.
    assert_eq!(fields["f:spec"]["f:selector"], json!({}));
    assert_eq!(fields["f:metadata"]["f:labels"]["f:app"], json!({}));
    let fin = json!({"metadata": {"finalizers": ["a", "b"]}});
    let s = typed::field_set(&fin, Ty::root(DEPLOYMENT));
    assert!(s.to_fields_v1()["f:metadata"]["f:finalizers"]["v:\"a\""].is_object());
}

#[test]
fn compare_reports_added_modified_removed() {
    let ty = Ty::root(DEPLOYMENT);
    let a = deployment(
        1,
        json!([{"name": "app", "image": "x:1"}, {"name": "old", "image": "o"}]),
    );
    let mut b = deployment(
        3,
        json!([{"name": "app", "image": "x:1"}, {"name": "new", "image": "n"}]),
    );
    b["metadata"]["labels"]["tier"] = json!("front");
    let c = typed::compare(&a, &b, ty);
    let s = |set: &Set| {
        set.paths()
            .iter()
            .map(|p| path_string(p))
            .collect::<Vec<_>>()
    };
    assert_eq!(s(&c.modified), vec![".spec.replicas"]);
    assert!(s(&c.added).contains(&".metadata.labels.tier".to_string()));
    assert!(s(&c.added).contains(&".spec.template.spec.containers[name=\"new\"]".to_string()));
    assert!(
        s(&c.removed).contains(&".spec.template.spec.containers[name=\"old\"].image".to_string())
    );
    assert!(typed::compare(&a, &a, ty).is_same());
    // Stored nulls (from a typed round trip) are absent fields, not changes.
    let with_null = json!({"spec": {"template": {"spec": {"initContainers": null}}}});
    assert!(typed::compare(&with_null, &json!({"spec": {"template": {"spec": {}}}}), ty).is_same());
}

#[test]
fn merge_by_list_type() {
    let ty = Ty::root("io.k8s.api.core.v1.Pod");
    let live = json!({"metadata": {"finalizers": ["a"]},
        "spec": {"containers": [{"name": "a", "image": "a:1", "args": ["x"]}, {"name": "b", "image": "b:1"}],
                 "tolerations": [{"key": "k1"}]}});
    let cfg = json!({"metadata": {"finalizers": ["b"]},
        "spec": {"containers": [{"name": "b", "image": "b:2"}, {"name": "c", "image": "c:1"}, {"name": "a", "args": ["y"]}],
                 "tolerations": [{"key": "k2"}]}});
    let m = typed::merge(Some(&live), &cfg, ty);
    assert_eq!(m["metadata"]["finalizers"], json!(["a", "b"]), "sets merge");
    assert_eq!(
        m["spec"]["tolerations"],
        json!([{"key": "k2"}]),
        "atomic lists are replaced"
    );
    let cs = m["spec"]["containers"].as_array().unwrap();
    let names: Vec<&str> = cs.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["b", "c", "a"]);
    assert_eq!(cs[2]["image"], "a:1", "a container merges field by field");
    assert_eq!(cs[2]["args"], json!(["y"]), "args is atomic");
}

#[test]
fn apply_conflicts_force_and_prune() {
    let now = "2025-01-01T00:00:00Z";
    let ty = Ty::root(DEPLOYMENT);
    let a = fm("alice");
    let created = a
        .apply(
            None,
            &deployment(2, json!([{"name": "app", "image": "x:1"}])),
            false,
        )
        .unwrap();
    let m = entries(&created);
    assert_eq!(m.0.len(), 1);
    assert_eq!(m.0[0].operation, "Apply");
    assert!(paths_of(&m, "alice").contains(&".spec.replicas".to_string()));
    assert!(!paths_of(&m, "alice")
        .iter()
        .any(|p| p.starts_with(".metadata.name")));

    // Bob applies another replica count: a conflict naming alice and the field.
    let b = fm("bob");
    let err = b
        .apply(
            Some(&created),
            &json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"}, "spec": {"replicas": 5}}),
            false,
        )
        .unwrap_err();
    assert_eq!(err.code, 409);
    assert_eq!(
        err.message,
        "Apply failed with 1 conflict: conflict with \"alice\": .spec.replicas"
    );
    let cause = &err.details.as_ref().unwrap().causes[0];
    assert_eq!(cause.reason, "FieldManagerConflict");
    assert_eq!(cause.field, ".spec.replicas");
    // The same value is no conflict: both own it.
    let shared = b
        .apply(
            Some(&created),
            &json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"}, "spec": {"replicas": 2}}),
            false,
        )
        .unwrap();
    assert!(paths_of(&entries(&shared), "bob").contains(&".spec.replicas".to_string()));
    // Forced, bob takes it over.
    let forced = b
        .apply(
            Some(&created),
            &json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"}, "spec": {"replicas": 5}}),
            true,
        )
        .unwrap();
    assert_eq!(forced["spec"]["replicas"], 5);
    let m = entries(&forced);
    assert!(!paths_of(&m, "alice").contains(&".spec.replicas".to_string()));
    assert!(paths_of(&m, "bob").contains(&".spec.replicas".to_string()));

    // Alice drops her label: it goes. She no longer owns replicas, so dropping it keeps it.
    let mut cfg = deployment(2, json!([{"name": "app", "image": "x:1"}]));
    cfg["metadata"].as_object_mut().unwrap().remove("labels");
    cfg["spec"].as_object_mut().unwrap().remove("replicas");
    let pruned = a.apply(Some(&forced), &cfg, false).unwrap();
    assert!(pruned["metadata"].get("labels").is_none(), "{pruned}");
    assert_eq!(pruned["spec"]["replicas"], 5);

    // Re-applying the same configuration changes nothing, managedFields included.
    let again = a.apply(Some(&pruned), &cfg, false).unwrap();
    assert_eq!(again, pruned);

    // An Update by someone else takes a field from the applier.
    let mut managers = entries(&pruned);
    let mut changed = pruned.clone();
    changed["spec"]["template"]["spec"]["containers"][0]["image"] = json!("x:2");
    let ignored = Set::new();
    managers.update(
        &pruned,
        &changed,
        &Writer {
            manager: "kubectl-edit",
            api_version: "apps/v1",
            subresource: "",
            ty,
            ignored: &ignored,
            now,
        },
    );
    let img = ".spec.template.spec.containers[name=\"app\"].image".to_string();
    assert!(paths_of(&managers, "kubectl-edit").contains(&img));
    assert!(!paths_of(&managers, "alice").contains(&img));
}

#[test]
fn two_appliers_share_a_list_map() {
    let a = fm("a");
    let b = fm("b");
    let obj = a
        .apply(
            None,
            &deployment(1, json!([{"name": "one", "image": "1"}])),
            false,
        )
        .unwrap();
    let mut cfg = deployment(1, json!([{"name": "two", "image": "2"}]));
    cfg["spec"].as_object_mut().unwrap().remove("replicas");
    let obj = b.apply(Some(&obj), &cfg, false).unwrap();
    let names: Vec<&str> = obj["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["one", "two"]);
    // b stops applying its container: only b's goes.
    let mut cfg2 = cfg.clone();
    cfg2["spec"]["template"]["spec"]["containers"] = json!([]);
    let obj = b.apply(Some(&obj), &cfg2, false).unwrap();
    let names: Vec<&str> = obj["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["one"]);
}

#[test]
fn update_entries_and_request_managed_fields() {
    let info = crate::registry::lookup("apps", "v1", "deployments").unwrap();
    let mut q = HashMap::new();
    q.insert("fieldManager".into(), "kubectl-create".into());
    let f = FieldManager::for_request(info, &q, &HeaderMap::new(), "", Options::Create).unwrap();
    let mut obj = deployment(1, json!([{"name": "app", "image": "x"}]));
    f.record_create(info, &mut obj, &Value::Null).unwrap();
    let m = entries(&obj);
    assert_eq!(m.0[0].operation, "Update");
    assert_eq!(m.0[0].api_version, "apps/v1");
    let mf = &obj["metadata"]["managedFields"][0]["fieldsV1"];
    assert_eq!(mf["f:metadata"]["f:labels"]["."], json!({}), "{mf}");
    assert!(mf["f:metadata"].get(".").is_none());
    // Invalid operations are 422; `[]` resets.
    let mut next = obj.clone();
    let bad =
        json!([{"manager": "x", "operation": "Steal", "fieldsType": "FieldsV1", "fieldsV1": {}}]);
    let err = f.record_update(info, &obj, &mut next, &bad).unwrap_err();
    assert_eq!(err.code, 422);
    assert!(
        err.message.contains("metadata.managedFields[0].operation"),
        "{}",
        err.message
    );
    let mut next = obj.clone();
    f.record_update(info, &obj, &mut next, &json!([])).unwrap();
    assert!(next["metadata"].get("managedFields").is_none());
    // The User-Agent names the manager when the query does not.
    let mut h = HeaderMap::new();
    h.insert(
        http::header::USER_AGENT,
        "kubectl/v1.32.0 (linux/amd64)".parse().unwrap(),
    );
    let f = FieldManager::for_request(info, &HashMap::new(), &h, "", Options::Update).unwrap();
    assert_eq!(f.manager, "kubectl");
    // Apply needs a manager.
    let err = FieldManager::for_request(info, &HashMap::new(), &h, "", Options::Apply).unwrap_err();
    assert_eq!(err.code, 422);
    assert!(
        err.message.contains("fieldManager: Required value"),
        "{}",
        err.message
    );
}

#[test]
fn kubectl_takes_over_client_side_applied_fields() {
    let info = crate::registry::lookup("apps", "v1", "deployments").unwrap();
    let mut q = HashMap::new();
    q.insert("fieldManager".into(), "kubectl-client-side-apply".into());
    let csa = FieldManager::for_request(info, &q, &HeaderMap::new(), "", Options::Create).unwrap();
    let applied = deployment(2, json!([{"name": "app", "image": "x"}]));
    let mut obj = applied.clone();
    obj["metadata"]["annotations"] = json!({LAST_APPLIED: applied.to_string()});
    csa.record_create(info, &mut obj, &Value::Null).unwrap();
    let cfg = deployment(3, json!([{"name": "app", "image": "x"}]));
    // Another manager conflicts; `kubectl` may take the annotation's fields.
    assert_eq!(
        fm("other").apply(Some(&obj), &cfg, false).unwrap_err().code,
        409
    );
    let out = fm("kubectl").apply(Some(&obj), &cfg, false).unwrap();
    assert_eq!(out["spec"]["replicas"], 3);
    let last: Value = serde_json::from_str(
        out["metadata"]["annotations"][LAST_APPLIED]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        last["spec"]["replicas"], 3,
        "the annotation follows the apply"
    );
}
