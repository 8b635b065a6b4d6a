//! Unknown-field detection for `fieldValidation=Strict|Warn`.
//!
//! The object is decoded into its `k8s-openapi` type (which drops fields it does not know) and
//! encoded back; every key of the request that did not survive is unknown. Paths are reported
//! as upstream does (`spec.template.spec.containers[0].imagePullPolice`). A typed decode that
//! fails is a type error in the request (`replicas: "three"`, `template: "x"`): upstream answers
//! those with 400 whatever the field-validation mode, and so does [`check`]. (k8s-openapi
//! accepts what upstream accepts here: quantities as numbers, missing required fields.)

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::registry::ResourceInfo;

fn roundtrip<T: DeserializeOwned + Serialize>(v: &Value) -> Option<Result<Value, String>> {
    Some(match serde_json::from_value::<T>(v.clone()) {
        Ok(t) => serde_json::to_value(t).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    })
}

fn typed(info: &ResourceInfo, obj: &Value) -> Option<Result<Value, String>> {
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

fn diff(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(am), Value::Object(bm)) => {
            for (k, v) in am {
                if v.is_null() {
                    continue;
                }
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match bm.get(k) {
                    None => out.push(p),
                    Some(bv) => diff(v, bv, &p, out),
                }
            }
        }
        (Value::Array(aa), Value::Array(ba)) if aa.len() == ba.len() => {
            for (i, (x, y)) in aa.iter().zip(ba).enumerate() {
                diff(x, y, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// The request's fields the kind's schema does not have (empty when none or for kinds without
/// a typed schema); `Err` is a type error (the decode message).
pub fn check(info: &ResourceInfo, obj: &Value) -> Result<Vec<String>, String> {
    let Some(rt) = typed(info, obj) else {
        return Ok(Vec::new());
    };
    let rt = rt?;
    let mut out = Vec::new();
    diff(obj, &rt, "", &mut out);
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
}
