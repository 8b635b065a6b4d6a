//! PATCH bodies: JSON patch (RFC 6902), JSON merge patch (RFC 7386) and strategic merge patch.
//!
//! JSON and merge patches come from the `json-patch` crate. Strategic merge patch needs, per
//! list field, whether it merges by a key; upstream takes that from the Go struct tags. For
//! built-in kinds this uses kelson-apimachinery's strategic merge patch driven by
//! kelson-apiresources' table generated from upstream's OpenAPI (`SmpMeta`). For a definition
//! the table does not know, a small fallback table of the common list fields (containers by
//! name, ports by containerPort / port, env by name, volumes by name, …) applies and other
//! lists are atomic, upstream's default. Directives handled there: `$patch:
//! replace|delete|merge`, `$retainKeys`, `$deleteFromPrimitiveList/<f>`, `$setElementOrder/<f>`
//! (ordering only; ignored).

use serde_json::{Map, Value};

use crate::error::ApiError;

/// Which patch a `Content-Type` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(mt: &str) -> Result<PatchType, ApiError> {
        Ok(match mt {
            "application/json-patch+json" => PatchType::Json,
            "application/merge-patch+json" => PatchType::Merge,
            "application/strategic-merge-patch+json" => PatchType::Strategic,
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => PatchType::Apply,
            other => return Err(ApiError::unsupported_media_type(other)),
        })
    }
}

/// Applies `patch` (raw body) of type `pt` to `orig`, an object of OpenAPI `definition`
/// (`io.k8s.api.apps.v1.Deployment`; empty when unknown).
pub fn apply_to(
    pt: PatchType,
    orig: &Value,
    body: &[u8],
    definition: &str,
) -> Result<Value, ApiError> {
    if pt == PatchType::Strategic && kelson_apiresources::Meta::for_definition(definition).is_some()
    {
        let p: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
        return kelson_apimachinery::patch::strategic_merge_patch(
            orig,
            &p,
            &kelson_apiresources::patch::SmpMeta,
            definition,
        )
        .map_err(|e| ApiError::new(e.code, e.reason, e.message));
    }
    apply(pt, orig, body)
}

/// Applies `patch` (raw body) of type `pt` to `orig` without schema knowledge.
pub fn apply(pt: PatchType, orig: &Value, body: &[u8]) -> Result<Value, ApiError> {
    match pt {
        PatchType::Json => {
            let p: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            let mut doc = orig.clone();
            json_patch::patch(&mut doc, &p).map_err(|e| {
                ApiError::new(422, "Invalid", format!("the server rejected our request due to an error in our request: {e}"))
            })?;
            Ok(doc)
        }
        PatchType::Merge => {
            let p: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            let mut doc = orig.clone();
            json_patch::merge(&mut doc, &p);
            Ok(doc)
        }
        PatchType::Strategic => {
            let p: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            if !p.is_object() {
                return Err(ApiError::bad_request("a strategic merge patch must be a JSON object"));
            }
            Ok(strategic(orig, &p, ""))
        }
        PatchType::Apply => Err(ApiError::unsupported_media_type(
            "application/apply-patch+yaml (server-side apply is not implemented in kelson-apiserver yet; use client-side `kubectl apply`)",
        )),
    }
}

/// The merge key of list field `field` under `path` (dot-joined parent fields), or `None` for
/// an atomic list. `Some("")` marks a set of scalars (union).
fn merge_key(path: &str, field: &str) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims"
        | "readinessGates" => {
            if field == "readinessGates" {
                "conditionType"
            } else {
                "name"
            }
        }
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "conditions" => "type",
        "hostAliases" => "ip",
        "ownerReferences" => "uid",
        "finalizers" => "",
        "ports" if path.contains("ontainers") => "containerPort",
        "ports" => "port",
        _ => return None,
    })
}

fn strategic(orig: &Value, patch: &Value, path: &str) -> Value {
    let Some(pm) = patch.as_object() else {
        return patch.clone();
    };
    if pm.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut m = pm.clone();
        m.remove("$patch");
        return Value::Object(m);
    }
    let mut out: Map<String, Value> = orig.as_object().cloned().unwrap_or_default();
    let mut retain: Option<Vec<String>> = None;
    for (k, pv) in pm {
        if k == "$patch" || k.starts_with("$setElementOrder/") {
            continue;
        }
        if k == "$retainKeys" {
            retain = pv.as_array().map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            });
            continue;
        }
        if let Some(f) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(list), Some(del)) =
                (out.get_mut(f).and_then(Value::as_array_mut), pv.as_array())
            {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        if pv.is_null() {
            out.remove(k);
            continue;
        }
        let child_path = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        match pv {
            Value::Object(o) if o.get("$patch").and_then(Value::as_str) == Some("delete") => {
                out.remove(k);
            }
            Value::Object(_) => {
                let cur = out.get(k).cloned().unwrap_or(Value::Object(Map::new()));
                let base = if cur.is_object() {
                    cur
                } else {
                    Value::Object(Map::new())
                };
                out.insert(k.clone(), strategic(&base, pv, &child_path));
            }
            Value::Array(items) => {
                let cur = out
                    .get(k)
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let merged = match merge_key(path, k) {
                    Some("") => {
                        let mut list = cur;
                        for it in items {
                            if !list.contains(it) {
                                list.push(it.clone());
                            }
                        }
                        list
                    }
                    Some(key) => merge_list(cur, items, key, &child_path),
                    None => items.clone(),
                };
                out.insert(k.clone(), Value::Array(merged));
            }
            _ => {
                out.insert(k.clone(), pv.clone());
            }
        }
    }
    if let Some(keep) = retain {
        out.retain(|k, _| keep.contains(k));
    }
    Value::Object(out)
}

fn merge_list(mut cur: Vec<Value>, items: &[Value], key: &str, path: &str) -> Vec<Value> {
    // `$patch: replace` as a list element replaces the whole list.
    if items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return items
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .cloned()
            .collect();
    }
    for it in items {
        let Some(kv) = it.get(key) else {
            cur.push(it.clone());
            continue;
        };
        let pos = cur.iter().position(|c| c.get(key) == Some(kv));
        let delete = it.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                cur.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => cur[i] = strategic(&cur[i], it, path),
            (None, false) => cur.push(strategic(&Value::Object(Map::new()), it, path)),
        }
    }
    cur
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merges_containers_by_name() {
        let orig = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "a:1", "ports": [{"containerPort": 80}]},
            {"name": "b", "image": "b:1"}
        ]}}}, "metadata": {"finalizers": ["x"], "labels": {"k": "v", "gone": "1"}}});
        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "b", "image": "b:2"}, {"name": "c", "image": "c:1"}, {"name": "a", "$patch": "delete"}
        ]}}}, "metadata": {"finalizers": ["y"], "labels": {"gone": null}}});
        let out = apply(PatchType::Strategic, &orig, patch.to_string().as_bytes()).unwrap();
        let cs = out["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap();
        assert_eq!(cs.len(), 2);
        assert_eq!(cs[0]["image"], "b:2");
        assert_eq!(cs[1]["name"], "c");
        assert_eq!(out["metadata"]["finalizers"], json!(["x", "y"]));
        assert_eq!(out["metadata"]["labels"], json!({"k": "v"}));
    }

    #[test]
    fn schema_driven_strategic_merge_for_built_in_kinds() {
        let orig = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]}],
                     "tolerations": [{"key": "k", "operator": "Exists"}]}});
        let patch = json!({"spec": {"containers": [{"name": "a", "env": [{"name": "Y", "value": "2"}]}],
                                    "tolerations": [{"key": "j", "operator": "Exists"}]}});
        let out = apply_to(
            PatchType::Strategic,
            &orig,
            patch.to_string().as_bytes(),
            "io.k8s.api.core.v1.Pod",
        )
        .unwrap();
        let c = &out["spec"]["containers"][0];
        assert_eq!(c["image"], "a:1");
        let env = c["env"].as_array().unwrap();
        assert_eq!(env.len(), 2, "merged by name, not replaced: {env:?}");
        assert!(env.contains(&json!({"name": "X", "value": "1"})));
        assert!(env.contains(&json!({"name": "Y", "value": "2"})));
        assert_eq!(
            out["spec"]["tolerations"],
            json!([{"key": "j", "operator": "Exists"}]),
            "tolerations are atomic"
        );
    }

    #[test]
    fn json_and_merge_patches() {
        let orig = json!({"a": 1, "b": {"c": 2}, "l": [1, 2]});
        let j = apply(
            PatchType::Json,
            &orig,
            br#"[{"op":"replace","path":"/a","value":5},{"op":"remove","path":"/l/0"}]"#,
        )
        .unwrap();
        assert_eq!(j, json!({"a": 5, "b": {"c": 2}, "l": [2]}));
        let m = apply(
            PatchType::Merge,
            &orig,
            br#"{"b":{"c":null,"d":3},"l":[9]}"#,
        )
        .unwrap();
        assert_eq!(m, json!({"a": 1, "b": {"d": 3}, "l": [9]}));
        assert_eq!(
            apply(
                PatchType::Json,
                &orig,
                br#"[{"op":"test","path":"/a","value":2}]"#
            )
            .unwrap_err()
            .code,
            422
        );
        assert_eq!(apply(PatchType::Apply, &orig, b"{}").unwrap_err().code, 415);
        assert_eq!(
            PatchType::from_content_type("text/plain").unwrap_err().code,
            415
        );
    }
}
