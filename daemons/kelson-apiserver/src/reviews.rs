//! Review resources: create-only kinds that are answered, never stored.
//!
//! `SelfSubjectAccessReview` / `SubjectAccessReview` / `LocalSubjectAccessReview`
//! (`kubectl auth can-i`) run the server's own authorizer on the attributes in the spec;
//! `SelfSubjectRulesReview` (`kubectl auth can-i --list`) lists the caller's rules in
//! `spec.namespace`, as the authorizer resolves them (kelson-rbac builds the status);
//! `SelfSubjectReview` (`kubectl auth whoami`) reports the caller's identity; `TokenReview`
//! authenticates the token in its spec (tokens.rs) for webhook-style callers. Upstream answers
//! these with 201 and the object with its `status` filled in; nothing reaches the store.

use http::{Response, StatusCode};
use serde_json::{json, Value};

use crate::auth::{Attributes, Decision, User};
use crate::handlers::Req;
use crate::http::{self as h, Body};
use crate::registry::ResourceInfo;
use kelson_apimachinery::ApiError;

pub fn is_review(info: &ResourceInfo) -> bool {
    matches!(
        (info.group, info.kind),
        (
            "authorization.k8s.io",
            "SelfSubjectAccessReview"
                | "SubjectAccessReview"
                | "LocalSubjectAccessReview"
                | "SelfSubjectRulesReview"
        ) | ("authentication.k8s.io", "SelfSubjectReview" | "TokenReview")
    )
}

fn attributes(spec: &Value) -> Attributes {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    if let Some(ra) = spec.get("resourceAttributes").filter(|v| v.is_object()) {
        Attributes {
            verb: s(&ra["verb"]),
            group: s(&ra["group"]),
            resource: s(&ra["resource"]),
            subresource: s(&ra["subresource"]),
            namespace: s(&ra["namespace"]),
            name: s(&ra["name"]),
            path: String::new(),
            resource_request: true,
        }
    } else {
        let na = &spec["nonResourceAttributes"];
        Attributes {
            verb: s(&na["verb"]),
            path: s(&na["path"]),
            resource_request: false,
            ..Default::default()
        }
    }
}

pub async fn create(r: &mut Req<'_>, body: &[u8]) -> Result<Response<Body>, ApiError> {
    let ct = r
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let mut obj = h::decode_object(ct, body)?;
    let info = r.t.info;
    obj["apiVersion"] = json!(info.api_version());
    obj["kind"] = json!(info.kind);
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    match info.kind {
        "SelfSubjectReview" => {
            obj["status"] = json!({"userInfo": {"username": r.user.name, "groups": r.user.groups}});
        }
        "TokenReview" => {
            if !obj["spec"].is_object() {
                return Err(ApiError::bad_request("spec is required"));
            }
            obj["status"] = crate::tokens::review_status(r.api, &obj["spec"]).await;
        }
        "SelfSubjectRulesReview" => {
            // The spec is optional here: no namespace asks for the cluster-wide rules only.
            let namespace = obj["spec"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            obj["status"] = r
                .api
                .authz
                .rules_review(r.user, &namespace)
                .unwrap_or_else(|| {
                    // Upstream's answer from an authorizer that cannot enumerate rules.
                    json!({"resourceRules": [], "nonResourceRules": [], "incomplete": true,
                        "evaluationError": "the authorizer cannot list rules"})
                });
        }
        kind => {
            if !obj["spec"].is_object() {
                return Err(ApiError::bad_request("spec is required"));
            }
            let subject = if kind == "SelfSubjectAccessReview" {
                r.user.clone()
            } else {
                let spec = &obj["spec"];
                User {
                    name: spec["user"].as_str().unwrap_or_default().to_string(),
                    groups: spec["groups"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|g| g.as_str().map(String::from))
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            };
            let mut attrs = attributes(&obj["spec"]);
            if kind == "LocalSubjectAccessReview" {
                attrs.namespace = r.t.namespace.clone().unwrap_or_default();
            }
            obj["status"] = match r.api.authz.authorize(&subject, &attrs) {
                Decision::Allow => json!({"allowed": true}),
                Decision::Deny(reason) => json!({"allowed": false, "reason": reason}),
            };
        }
    }
    Ok(h::json(StatusCode::CREATED, &obj))
}
