//! Unknown-field detection for `fieldValidation=Strict|Warn`, for every kind the registry serves.
//!
//! Unknown fields are found by walking the request against the kind's schema in the OpenAPI v2
//! document the server publishes (`kelson_apiresources::openapi_v2`, generated from
//! `k8s-openapi`'s schemas): a key that the object's schema neither declares in `properties`
//! nor allows through `additionalProperties` (or `x-kubernetes-preserve-unknown-fields`) is
//! unknown. Paths are reported as upstream does
//! (`spec.template.spec.containers[0].imagePullPolice`). Type errors (`replicas: "three"`,
//! `template: "x"`) come from decoding into the `k8s-openapi` type where the kind has one
//! here: upstream answers those with 400 whatever the field-validation mode, and so does
//! [`check`]. (k8s-openapi accepts what upstream accepts here: quantities as numbers, missing
//! required fields.)

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::registry::ResourceInfo;

/// The type verdict: decodes `v` as `T` straight from the borrowed tree (no clone of the
/// request, and no encode back: only the decode's error matters, and a k8s-openapi type that
/// decoded always encodes).
fn roundtrip<T: DeserializeOwned>(v: &Value) -> Option<Result<(), String>> {
    Some(T::deserialize(v).map(drop).map_err(|e| e.to_string()))
}

fn typed(info: &ResourceInfo, obj: &Value) -> Option<Result<(), String>> {
    use k8s_openapi::api::*;
    match (info.group, info.kind) {
        ("", "Namespace") => roundtrip::<core::v1::Namespace>(obj),
        ("", "Pod") => roundtrip::<core::v1::Pod>(obj),
        ("", "Service") => roundtrip::<core::v1::Service>(obj),
        ("", "ConfigMap") => roundtrip::<core::v1::ConfigMap>(obj),
        ("", "Secret") => roundtrip::<core::v1::Secret>(obj),
        ("", "Node") => roundtrip::<core::v1::Node>(obj),
        ("", "ServiceAccount") => roundtrip::<core::v1::ServiceAccount>(obj),
        ("", "Event") => roundtrip::<core::v1::Event>(obj),
        ("events.k8s.io", "Event") => roundtrip::<events::v1::Event>(obj),
        ("", "Endpoints") => roundtrip::<core::v1::Endpoints>(obj),
        ("", "PersistentVolumeClaim") => roundtrip::<core::v1::PersistentVolumeClaim>(obj),
        ("", "PersistentVolume") => roundtrip::<core::v1::PersistentVolume>(obj),
        ("", "ResourceQuota") => roundtrip::<core::v1::ResourceQuota>(obj),
        ("", "LimitRange") => roundtrip::<core::v1::LimitRange>(obj),
        ("apps", "Deployment") => roundtrip::<apps::v1::Deployment>(obj),
        ("apps", "ReplicaSet") => roundtrip::<apps::v1::ReplicaSet>(obj),
        ("apps", "StatefulSet") => roundtrip::<apps::v1::StatefulSet>(obj),
        ("apps", "DaemonSet") => roundtrip::<apps::v1::DaemonSet>(obj),
        ("apps", "ControllerRevision") => roundtrip::<apps::v1::ControllerRevision>(obj),
        ("batch", "Job") => roundtrip::<batch::v1::Job>(obj),
        ("batch", "CronJob") => roundtrip::<batch::v1::CronJob>(obj),
        ("coordination.k8s.io", "Lease") => roundtrip::<coordination::v1::Lease>(obj),
        ("discovery.k8s.io", "EndpointSlice") => roundtrip::<discovery::v1::EndpointSlice>(obj),
        ("networking.k8s.io", "Ingress") => roundtrip::<networking::v1::Ingress>(obj),
        ("networking.k8s.io", "NetworkPolicy") => roundtrip::<networking::v1::NetworkPolicy>(obj),
        ("policy", "PodDisruptionBudget") => roundtrip::<policy::v1::PodDisruptionBudget>(obj),
        ("rbac.authorization.k8s.io", "Role") => roundtrip::<rbac::v1::Role>(obj),
        ("rbac.authorization.k8s.io", "RoleBinding") => roundtrip::<rbac::v1::RoleBinding>(obj),
        ("rbac.authorization.k8s.io", "ClusterRole") => roundtrip::<rbac::v1::ClusterRole>(obj),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => {
            roundtrip::<rbac::v1::ClusterRoleBinding>(obj)
        }
        ("scheduling.k8s.io", "PriorityClass") => roundtrip::<scheduling::v1::PriorityClass>(obj),
        ("storage.k8s.io", "StorageClass") => roundtrip::<storage::v1::StorageClass>(obj),
        _ => None,
    }
}

/// The v2 document's definitions, parsed once.
fn definitions() -> &'static HashMap<String, Value> {
    static DEFS: OnceLock<HashMap<String, Value>> = OnceLock::new();
    DEFS.get_or_init(|| {
        let doc: Value =
            serde_json::from_slice(kelson_apiresources::openapi::openapi_v2()).unwrap_or_default();
        match doc.get("definitions") {
            Some(Value::Object(m)) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            _ => HashMap::new(),
        }
    })
}

/// Follows `$ref` (directly or through a one-element `allOf`) to the definition.
fn resolve<'a>(defs: &'a HashMap<String, Value>, mut s: &'a Value) -> &'a Value {
    for _ in 0..16 {
        let r = s
            .get("$ref")
            .or_else(|| {
                s.get("allOf")
                    .and_then(|a| a.get(0))
                    .and_then(|x| x.get("$ref"))
            })
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("#/definitions/"));
        match r.and_then(|r| defs.get(r)) {
            Some(d) => s = d,
            None => break,
        }
    }
    s
}

/// Walks `v` against `schema`, pushing unknown paths to `out`. `path` is one buffer extended
/// and truncated around each step (no string allocated per visited field).
fn walk(
    defs: &HashMap<String, Value>,
    v: &Value,
    schema: &Value,
    path: &mut String,
    out: &mut Vec<String>,
) {
    let schema = resolve(defs, schema);
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    let len = path.len();
    match v {
        Value::Object(m) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let extra = schema.get("additionalProperties").filter(|a| a.is_object());
            if props.is_none() && extra.is_none() {
                // A free-form object (RawExtension, JSON): anything goes.
                return;
            }
            for (k, c) in m {
                if c.is_null() {
                    continue;
                }
                if len > 0 {
                    path.push('.');
                }
                path.push_str(k);
                match (props.and_then(|p| p.get(k)), extra) {
                    (Some(s), _) | (None, Some(s)) => walk(defs, c, s, path, out),
                    (None, None) => out.push(path.clone()),
                }
                path.truncate(len);
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, c) in items.iter().enumerate() {
                    use std::fmt::Write;
                    let _ = write!(path, "[{i}]");
                    walk(defs, c, s, path, out);
                    path.truncate(len);
                }
            }
        }
        _ => {}
    }
}

/// The request's fields the kind's schema does not have (empty when none, or for a kind the
/// document has no schema for); `Err` is a type error (the decode message).
pub fn check(info: &ResourceInfo, obj: &Value) -> Result<Vec<String>, String> {
    // Custom resources: what their structural schema would prune (crd/).
    if let Some(unknown) = crate::crd::unknown_fields(info, obj) {
        return Ok(unknown);
    }
    if let Some(Err(e)) = typed(info, obj) {
        return Err(e);
    }
    let defs = definitions();
    let mut out = Vec::new();
    if let Some(schema) = defs.get(info.definition) {
        walk(defs, obj, schema, &mut String::new(), &mut out);
    }
    Ok(out)
}

/// [`check`] without the type verdict.
pub fn unknown_fields(info: &ResourceInfo, obj: &Value) -> Vec<String> {
    check(info, obj).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_unknown_fields_with_paths() {
        let info = crate::registry::lookup("apps", "v1", "deployments").unwrap();
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"a": "b"}, "creationTimestamp": null},
            "spec": {"replicas": 1, "bogus": true, "selector": {"matchLabels": {"a": "b"}},
              "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "x", "imagePullPolice": "Always"}]}}}});
        assert_eq!(
            unknown_fields(info, &d),
            vec![
                "spec.bogus".to_string(),
                "spec.template.spec.containers[0].imagePullPolice".to_string()
            ]
        );
        let cm = crate::registry::lookup("", "v1", "configmaps").unwrap();
        let mut bad = d.clone();
        bad["spec"]["replicas"] = json!("three");
        assert!(check(info, &bad).is_err());
        let mut bad = d.clone();
        bad["spec"]["template"] = json!("x");
        assert!(check(info, &bad).is_err());
        let mut quantity = d.clone();
        quantity["spec"]["template"]["spec"]["containers"][0]["resources"] =
            json!({"limits": {"cpu": 1}});
        assert!(check(info, &quantity).is_ok(), "quantities may be numbers");
        assert!(unknown_fields(cm, &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}})).is_empty());
    }

    #[test]
    fn every_served_kind_has_a_schema() {
        for r in crate::registry::resources() {
            assert!(
                definitions().contains_key(r.definition),
                "{} has no schema for field validation",
                r.definition
            );
        }
        // Kinds without a typed decode here are covered by the schema walk.
        let pc = crate::registry::lookup("scheduling.k8s.io", "v1", "priorityclasses").unwrap();
        assert_eq!(
            unknown_fields(
                pc,
                &json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                "metadata": {"name": "p", "labels": {"any": "x"}}, "value": 5, "valu": 6})
            ),
            vec!["valu".to_string()]
        );
        let csr = crate::registry::resources()
            .iter()
            .find(|r| r.kind == "Role")
            .unwrap();
        assert_eq!(
            unknown_fields(csr, &json!({"rules": [{"verbs": ["get"], "verb": "x"}]})),
            vec!["rules[0].verb".to_string()]
        );
    }
}
