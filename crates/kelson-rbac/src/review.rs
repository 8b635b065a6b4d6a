//! What the API server says about authorization: `SelfSubjectRulesReview` status
//! (`kubectl auth can-i --list`) and upstream's Forbidden message.
//!
//! The status is upstream's `SubjectRulesReviewStatus` in its JSON form: `resourceRules` and
//! `nonResourceRules` always present (possibly empty), empty rule fields omitted, `incomplete`
//! set when rule resolution hit errors, which `evaluationError` then carries.

use k8s_openapi::api::rbac::v1::PolicyRule;
use serde_json::{json, Map, Value};

use crate::authorizer::Rbac;
use crate::{Attributes, User};

fn put_list(m: &mut Map<String, Value>, key: &str, v: &Option<Vec<String>>) {
    if let Some(v) = v.as_ref().filter(|v| !v.is_empty()) {
        m.insert(key.into(), json!(v));
    }
}

fn resource_rule_json(r: &PolicyRule) -> Value {
    let mut m = Map::new();
    m.insert("verbs".into(), json!(r.verbs));
    put_list(&mut m, "apiGroups", &r.api_groups);
    put_list(&mut m, "resources", &r.resources);
    put_list(&mut m, "resourceNames", &r.resource_names);
    Value::Object(m)
}

fn non_resource_rule_json(r: &PolicyRule) -> Value {
    let mut m = Map::new();
    m.insert("verbs".into(), json!(r.verbs));
    put_list(&mut m, "nonResourceURLs", &r.non_resource_urls);
    Value::Object(m)
}

/// The `status` of a SelfSubjectRulesReview for `user` in `namespace`.
pub fn rules_review_status(rbac: &Rbac, user: &User, namespace: &str) -> Value {
    let rules = rbac.rules_for(user, namespace);
    let mut status = json!({
        "resourceRules": rules.resource_rules.iter().map(resource_rule_json).collect::<Vec<_>>(),
        "nonResourceRules": rules.non_resource_rules.iter().map(non_resource_rule_json).collect::<Vec<_>>(),
        "incomplete": rules.evaluation_error.is_some(),
    });
    if let Some(e) = rules.evaluation_error {
        status["evaluationError"] = json!(e);
    }
    status
}

/// Upstream's 403 message for a denied request (`forbiddenMessage` in the apiserver's
/// handlers plus the authorizer's reason after `: ` when there is one).
pub fn forbidden_message(user: &User, attrs: &Attributes, reason: &str) -> String {
    let mut msg = if !attrs.resource_request {
        format!(
            "forbidden: User {:?} cannot {} path {:?}",
            user.name, attrs.verb, attrs.path
        )
    } else {
        let mut resource = attrs.resource.clone();
        if !attrs.subresource.is_empty() {
            resource = format!("{resource}/{}", attrs.subresource);
        }
        let scope = if attrs.namespace.is_empty() {
            "at the cluster scope".to_string()
        } else {
            format!("in the namespace {:?}", attrs.namespace)
        };
        // The qualified resource is upstream's GroupResource: no subresource.
        let qualified = if attrs.group.is_empty() {
            attrs.resource.clone()
        } else {
            format!("{}.{}", attrs.resource, attrs.group)
        };
        let what = if attrs.name.is_empty() {
            qualified
        } else {
            format!("{qualified} {:?}", attrs.name)
        };
        format!(
            "{what} is forbidden: User {:?} cannot {} resource {:?} in API group {:?} {scope}",
            user.name, attrs.verb, resource, attrs.group
        )
    };
    if !reason.is_empty() {
        msg.push_str(": ");
        msg.push_str(reason);
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::PolicyCache;
    use std::sync::Arc;

    #[test]
    fn forbidden_messages_as_upstream() {
        let bob = User::new("bob", &[]);
        assert_eq!(
            forbidden_message(
                &bob,
                &Attributes::resource("list", "", "pods", "default", ""),
                ""
            ),
            r#"pods is forbidden: User "bob" cannot list resource "pods" in API group "" in the namespace "default""#
        );
        assert_eq!(
            forbidden_message(
                &bob,
                &Attributes::resource("get", "apps", "deployments/scale", "", "web"),
                "RBAC: x"
            ),
            r#"deployments.apps "web" is forbidden: User "bob" cannot get resource "deployments/scale" in API group "apps" at the cluster scope: RBAC: x"#
        );
        assert_eq!(
            forbidden_message(&bob, &Attributes::non_resource("get", "/metrics"), ""),
            r#"forbidden: User "bob" cannot get path "/metrics""#
        );
    }

    #[test]
    fn rules_review_json_shape() {
        let objs = crate::bootstrap::objects();
        let rbac = Rbac::new(Arc::new(PolicyCache::from_objects(&objs).unwrap()));
        let st = rules_review_status(
            &rbac,
            &User::new("bob", &["system:authenticated"]),
            "default",
        );
        assert_eq!(st["incomplete"], false);
        assert!(st.get("evaluationError").is_none());
        let rr = st["resourceRules"].as_array().unwrap();
        assert!(rr.iter().any(|r| r["resources"]
            == json!(["selfsubjectaccessreviews", "selfsubjectrulesreviews"])
            && r["verbs"] == json!(["create"])));
        assert!(rr
            .iter()
            .all(|r| r.get("resourceNames").is_none() && r.get("nonResourceURLs").is_none()));
        let nr = st["nonResourceRules"].as_array().unwrap();
        assert!(nr.iter().any(|r| r["nonResourceURLs"]
            .as_array()
            .unwrap()
            .contains(&json!("/apis/*"))));
        assert!(nr.iter().all(|r| r.get("apiGroups").is_none()));

        let broken = PolicyCache::from_objects(&[serde_json::json!({"kind": "RoleBinding",
            "metadata": {"name": "b", "namespace": "x"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "gone"},
            "subjects": [{"kind": "User", "name": "bob"}]})])
        .unwrap();
        let st = rules_review_status(&Rbac::new(Arc::new(broken)), &User::new("bob", &[]), "x");
        assert_eq!(st["incomplete"], true);
        assert_eq!(
            st["evaluationError"],
            r#"role.rbac.authorization.k8s.io "gone" not found"#
        );
        assert_eq!(st["resourceRules"], json!([]));
    }
}
