//! PATCH bodies: which patch a request carries, and applying it with kelson-apimachinery.
//!
//! JSON patch (RFC 6902), JSON merge patch (RFC 7386) and strategic merge patch all come from
//! `kelson_apimachinery::patch`; strategic merge patch takes its schema knowledge (which lists
//! merge, by which key) from kelson-apiresources' table generated from upstream's OpenAPI
//! (`SmpMeta`). A definition the table does not know (the `Scale` subresource) gets upstream's
//! default for unknown fields: maps merge, lists are replaced. Server-side apply
//! (`application/apply-patch+yaml`) is not a patch of this kind: the handlers send it to
//! `crate::apply`; only the scale subresource, which has no field management, answers it with
//! a 415 here.

use serde_json::Value;

use kelson_apimachinery::ApiError;

/// Which patch a `Content-Type` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

/// The media types PATCH accepts (what a 415 lists).
const PATCH_MEDIA_TYPES: &str = "application/json-patch+json, application/merge-patch+json, \
    application/strategic-merge-patch+json, application/apply-patch+yaml";

impl PatchType {
    pub fn from_content_type(mt: &str) -> Result<PatchType, ApiError> {
        Ok(match mt {
            "application/json-patch+json" => PatchType::Json,
            "application/merge-patch+json" => PatchType::Merge,
            "application/strategic-merge-patch+json" => PatchType::Strategic,
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => PatchType::Apply,
            _ => return Err(ApiError::unsupported_media_type(PATCH_MEDIA_TYPES)),
        })
    }
}

fn decode_patch(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))
}

/// Applies `patch` (raw body) of type `pt` to `orig`, an object of OpenAPI `definition`
/// (`io.k8s.api.apps.v1.Deployment`; empty when unknown).
pub fn apply_to(
    pt: PatchType,
    orig: &Value,
    body: &[u8],
    definition: &str,
) -> Result<Value, ApiError> {
    use kelson_apimachinery::patch;
    let mut doc = orig.clone();
    match pt {
        PatchType::Json => {
            patch::json_patch(&mut doc, body)?;
            Ok(doc)
        }
        PatchType::Merge => {
            patch::merge_patch(&mut doc, &decode_patch(body)?);
            Ok(doc)
        }
        PatchType::Strategic => patch::strategic_merge_patch(
            orig,
            &decode_patch(body)?,
            &kelson_apiresources::patch::SmpMeta,
            definition,
        ),
        PatchType::Apply => Err(ApiError::unsupported_media_type(
            "application/json-patch+json, application/merge-patch+json, \
             application/strategic-merge-patch+json (server-side apply is served for resources \
             and their status, not for the scale subresource)",
        )),
    }
}

/// Applies `patch` (raw body) of type `pt` to `orig` without schema knowledge.
pub fn apply(pt: PatchType, orig: &Value, body: &[u8]) -> Result<Value, ApiError> {
    apply_to(pt, orig, body, "")
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
        let out = apply_to(
            PatchType::Strategic,
            &orig,
            patch.to_string().as_bytes(),
            "io.k8s.api.apps.v1.Deployment",
        )
        .unwrap();
        let cs = out["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap();
        assert_eq!(cs.len(), 2);
        assert_eq!(cs[0]["image"], "b:2");
        assert_eq!(cs[1]["name"], "c");
        // Upstream's normalizeElementOrder: patch items not in the live list come first.
        assert_eq!(out["metadata"]["finalizers"], json!(["y", "x"]));
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
