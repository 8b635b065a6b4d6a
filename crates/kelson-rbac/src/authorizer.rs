//! The RBAC evaluator: upstream's `RBACAuthorizer` over `DefaultRuleResolver`.
//!
//! For a user and a namespace, [`Rbac::visit_rules_for`] walks every ClusterRoleBinding whose
//! subjects include the user (by name, by group, or as a service account
//! `system:serviceaccount:<ns>:<name>`), then — for namespaced requests — every RoleBinding in
//! that namespace, and hands each bound rule to a visitor that may stop the walk. Resolution
//! problems (a binding to a missing role, a source that cannot answer) are handed over as
//! errors and the walk goes on: a rule that allows is still valid, and rules only ever grant.
//!
//! [`Rbac::authorize`] stops at the first rule that allows and names it in the reason
//! (`RBAC: allowed by ClusterRoleBinding "x" of ClusterRole "y" to User "bob"`); otherwise it
//! has no opinion and its reason carries only the resolution errors (`RBAC: clusterrole...
//! "x" not found`), so the API server's 403 message is byte-for-byte upstream's.
//!
//! Aggregated ClusterRoles: upstream's clusterrole-aggregation controller overwrites an
//! aggregated role's `rules` with the union, in name order and without duplicates, of the rules
//! of every other ClusterRole its `clusterRoleSelectors` match. The evaluator computes that
//! same union on demand (recursively, so `admin` picks up `edit`'s aggregated rules, with a
//! visited set against cycles), so bindings to `admin`/`edit`/`view` work whether or not a
//! controller has written the rules back.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kelson_apimachinery::selector::label_selector_as_selector;

use crate::rule::rule_allows;
use crate::source::{PolicySource, SourceError};
use crate::{service_account_username, Attributes, Decision, User};

/// A problem resolving the rules bound to a user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("unsupported role reference kind: {0:?}")]
    UnsupportedRoleRef(String),
    #[error("clusterrole {role:?} has an invalid aggregation selector: {message}")]
    Selector { role: String, message: String },
}

/// Upstream's `utilerrors.NewAggregate(errs).Error()`: one error as is, several de-duplicated
/// in `[a, b]`.
pub fn aggregate_errors(errors: &[ResolveError]) -> String {
    let mut seen: Vec<String> = Vec::new();
    for e in errors {
        let msg = e.to_string();
        if !seen.contains(&msg) {
            seen.push(msg);
        }
    }
    match seen.len() {
        0 => String::new(),
        1 => seen.pop().unwrap_or_default(),
        _ => format!("[{}]", seen.join(", ")),
    }
}

/// Which binding granted a rule (upstream's binding describers).
#[derive(Debug, Clone, Copy)]
pub enum RuleSource<'a> {
    ClusterRoleBinding(&'a ClusterRoleBinding, &'a Subject),
    RoleBinding(&'a RoleBinding, &'a Subject),
}

fn describe_subject(s: &Subject, binding_namespace: &str) -> String {
    if s.kind == "ServiceAccount" {
        let ns = s
            .namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or(binding_namespace);
        format!("{} {:?}", s.kind, format!("{}/{}", s.name, ns))
    } else {
        format!("{} {:?}", s.kind, s.name)
    }
}

impl fmt::Display for RuleSource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleSource::ClusterRoleBinding(b, s) => write!(
                f,
                "ClusterRoleBinding {:?} of {} {:?} to {}",
                b.metadata.name.as_deref().unwrap_or_default(),
                b.role_ref.kind,
                b.role_ref.name,
                describe_subject(s, "")
            ),
            RuleSource::RoleBinding(b, s) => {
                let ns = b.metadata.namespace.as_deref().unwrap_or_default();
                write!(
                    f,
                    "RoleBinding {:?} of {} {:?} to {}",
                    format!("{}/{}", b.metadata.name.as_deref().unwrap_or_default(), ns),
                    b.role_ref.kind,
                    b.role_ref.name,
                    describe_subject(s, ns)
                )
            }
        }
    }
}

/// Upstream's `appliesToUser`. `namespace` is the binding's namespace ("" for cluster
/// bindings), the default for a ServiceAccount subject without one.
pub fn applies_to_user(user: &User, subject: &Subject, namespace: &str) -> bool {
    match subject.kind.as_str() {
        "User" => user.name == subject.name,
        "Group" => user.groups.contains(&subject.name),
        "ServiceAccount" => {
            let ns = subject
                .namespace
                .as_deref()
                .filter(|n| !n.is_empty())
                .unwrap_or(namespace);
            !ns.is_empty() && user.name == service_account_username(ns, &subject.name)
        }
        _ => false,
    }
}

fn applies_to<'s>(
    user: &User,
    subjects: &'s Option<Vec<Subject>>,
    namespace: &str,
) -> Option<&'s Subject> {
    subjects
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|s| applies_to_user(user, s, namespace))
}

/// What [`Rbac::visit_rules_for`] calls: `(source, rule, error)`, returning whether to go on.
pub type Visitor<'v> =
    dyn FnMut(Option<RuleSource<'_>>, Option<&PolicyRule>, Option<ResolveError>) -> bool + 'v;

/// The rules bound to a user in a namespace (for rules reviews).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RulesFor {
    /// Rules with resources (as upstream: verbs, apiGroups, resources, resourceNames).
    pub resource_rules: Vec<PolicyRule>,
    /// Rules with nonResourceURLs (verbs, nonResourceURLs).
    pub non_resource_rules: Vec<PolicyRule>,
    /// The aggregated resolution errors; the list may be incomplete when set.
    pub evaluation_error: Option<String>,
}

/// The RBAC evaluator over any [`PolicySource`].
#[derive(Clone)]
pub struct Rbac {
    source: Arc<dyn PolicySource>,
}

impl fmt::Debug for Rbac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Rbac")
    }
}

impl Rbac {
    pub fn new(source: Arc<dyn PolicySource>) -> Self {
        Rbac { source }
    }

    pub fn source(&self) -> &Arc<dyn PolicySource> {
        &self.source
    }

    /// Upstream's `RBACAuthorizer.Authorize`.
    pub fn authorize(&self, user: &User, attrs: &Attributes) -> Decision {
        let mut allowed: Option<String> = None;
        let mut errors = Vec::new();
        self.visit_rules_for(user, &attrs.namespace, &mut |source, rule, err| {
            if let (Some(source), Some(rule)) = (source, rule) {
                if rule_allows(attrs, rule) {
                    allowed = Some(format!("RBAC: allowed by {source}"));
                    return false;
                }
            }
            if let Some(e) = err {
                errors.push(e);
            }
            true
        });
        match allowed {
            Some(reason) => Decision::Allow(reason),
            None if errors.is_empty() => Decision::NoOpinion(String::new()),
            None => Decision::NoOpinion(format!("RBAC: {}", aggregate_errors(&errors))),
        }
    }

    /// Upstream's `RBACAuthorizer.RulesFor`: every rule bound to `user` in `namespace`
    /// (cluster-wide bindings included), split into resource and non-resource rules.
    pub fn rules_for(&self, user: &User, namespace: &str) -> RulesFor {
        let mut out = RulesFor::default();
        let mut errors = Vec::new();
        self.visit_rules_for(user, namespace, &mut |_, rule, err| {
            if let Some(rule) = rule {
                if rule.resources.as_ref().is_some_and(|r| !r.is_empty()) {
                    out.resource_rules.push(PolicyRule {
                        non_resource_urls: None,
                        ..rule.clone()
                    });
                }
                if rule
                    .non_resource_urls
                    .as_ref()
                    .is_some_and(|u| !u.is_empty())
                {
                    out.non_resource_rules.push(PolicyRule {
                        verbs: rule.verbs.clone(),
                        non_resource_urls: rule.non_resource_urls.clone(),
                        ..Default::default()
                    });
                }
            }
            if let Some(e) = err {
                errors.push(e);
            }
            true
        });
        if !errors.is_empty() {
            out.evaluation_error = Some(aggregate_errors(&errors));
        }
        out
    }

    /// Upstream's `VisitRulesFor`: calls `visitor(source, rule, error)` for each rule bound
    /// to `user` (cluster role bindings, then role bindings in `namespace` if non-empty) and
    /// each resolution error; the walk stops when the visitor returns false.
    pub fn visit_rules_for(&self, user: &User, namespace: &str, visitor: &mut Visitor<'_>) {
        match self.source.list_cluster_role_bindings() {
            Err(e) => {
                if !visitor(None, None, Some(e.into())) {
                    return;
                }
            }
            Ok(bindings) => {
                for b in &bindings {
                    let Some(subject) = applies_to(user, &b.subjects, "") else {
                        continue;
                    };
                    match self.role_ref_rules(&b.role_ref, "") {
                        Err(e) => {
                            if !visitor(None, None, Some(e)) {
                                return;
                            }
                        }
                        Ok(rules) => {
                            let src = RuleSource::ClusterRoleBinding(b, subject);
                            for r in rules.iter() {
                                if !visitor(Some(src), Some(r), None) {
                                    return;
                                }
                            }
                        }
                    }
                }
            }
        }
        if namespace.is_empty() {
            return;
        }
        match self.source.list_role_bindings(namespace) {
            Err(e) => {
                visitor(None, None, Some(e.into()));
            }
            Ok(bindings) => {
                for b in &bindings {
                    let Some(subject) = applies_to(user, &b.subjects, namespace) else {
                        continue;
                    };
                    match self.role_ref_rules(&b.role_ref, namespace) {
                        Err(e) => {
                            if !visitor(None, None, Some(e)) {
                                return;
                            }
                        }
                        Ok(rules) => {
                            let src = RuleSource::RoleBinding(b, subject);
                            for r in rules.iter() {
                                if !visitor(Some(src), Some(r), None) {
                                    return;
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Upstream's `GetRoleReferenceRules`, with aggregation applied to ClusterRoles.
    pub fn role_ref_rules(
        &self,
        role_ref: &RoleRef,
        binding_namespace: &str,
    ) -> Result<Arc<Vec<PolicyRule>>, ResolveError> {
        match role_ref.kind.as_str() {
            "Role" => {
                let role = self.source.get_role(binding_namespace, &role_ref.name)?;
                Ok(Arc::new(role.rules.clone().unwrap_or_default()))
            }
            "ClusterRole" => {
                let role = self.source.get_cluster_role(&role_ref.name)?;
                self.cluster_role_rules(&role)
            }
            other => Err(ResolveError::UnsupportedRoleRef(other.to_string())),
        }
    }

    /// A ClusterRole's effective rules: its own, or for an aggregated role the union the
    /// aggregation controller would write.
    pub fn cluster_role_rules(
        &self,
        role: &ClusterRole,
    ) -> Result<Arc<Vec<PolicyRule>>, ResolveError> {
        if role.aggregation_rule.is_none() {
            return Ok(Arc::new(role.rules.clone().unwrap_or_default()));
        }
        let all = self.source.list_cluster_roles()?;
        let mut visited = HashSet::new();
        let mut out = Vec::new();
        aggregate(role, &all, &mut visited, &mut out)?;
        Ok(Arc::new(out))
    }
}

fn selector_matches(
    role: &ClusterRole,
    sel: &LabelSelector,
    candidate: &ClusterRole,
) -> Result<bool, ResolveError> {
    let err = |message: String| ResolveError::Selector {
        role: role.metadata.name.clone().unwrap_or_default(),
        message,
    };
    let v = serde_json::to_value(sel).map_err(|e| err(e.to_string()))?;
    let selector = label_selector_as_selector(Some(&v)).map_err(|e| err(e.to_string()))?;
    let empty = Default::default();
    Ok(selector.matches(candidate.metadata.labels.as_ref().unwrap_or(&empty)))
}

/// Appends `role`'s effective rules to `out` (skipping duplicates). For an aggregated role
/// these are the effective rules of each matched role, selector by selector, roles in name
/// order (the source lists them so). An aggregated role met again while it is being expanded
/// adds nothing: at the controller's fixed point its rules are the union being computed, and
/// its stored (stale) rules would have been overwritten.
fn aggregate(
    role: &ClusterRole,
    all: &[Arc<ClusterRole>],
    visited: &mut HashSet<String>,
    out: &mut Vec<PolicyRule>,
) -> Result<(), ResolveError> {
    let name = role.metadata.name.clone().unwrap_or_default();
    let selectors = role
        .aggregation_rule
        .as_ref()
        .and_then(|a| a.cluster_role_selectors.as_deref());
    let Some(selectors) = selectors else {
        for r in role.rules.as_deref().unwrap_or_default() {
            if !out.contains(r) {
                out.push(r.clone());
            }
        }
        return Ok(());
    };
    if !visited.insert(name.clone()) {
        // Already being expanded further up: its rules are the union being computed.
        return Ok(());
    }
    for sel in selectors {
        for candidate in all {
            if candidate.metadata.name.as_deref() == Some(name.as_str()) {
                continue;
            }
            if selector_matches(role, sel, candidate)? {
                aggregate(candidate, all, visited, out)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::PolicyCache;
    use serde_json::{json, Value};

    fn rbac(objects: &[Value]) -> Rbac {
        Rbac::new(Arc::new(PolicyCache::from_objects(objects).unwrap()))
    }
    fn cluster_role(name: &str, rules: Value) -> Value {
        json!({"kind": "ClusterRole", "metadata": {"name": name}, "rules": rules})
    }
    fn crb(name: &str, role: &str, subjects: Value) -> Value {
        json!({"kind": "ClusterRoleBinding", "metadata": {"name": name},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
               "subjects": subjects})
    }
    fn rb(ns: &str, name: &str, kind: &str, role: &str, subjects: Value) -> Value {
        json!({"kind": "RoleBinding", "metadata": {"name": name, "namespace": ns},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
               "subjects": subjects})
    }
    fn pods_reader() -> Value {
        cluster_role(
            "pod-reader",
            json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]),
        )
    }
    fn bob() -> User {
        User::new("bob", &["devs", "system:authenticated"])
    }
    fn list_pods(ns: &str) -> Attributes {
        Attributes::resource("list", "", "pods", ns, "")
    }

    #[test]
    fn no_bindings_no_opinion_with_empty_reason() {
        let r = rbac(&[pods_reader()]);
        assert_eq!(
            r.authorize(&bob(), &list_pods("default")),
            Decision::NoOpinion(String::new())
        );
    }

    #[test]
    fn cluster_role_binding_to_user_group_and_service_account() {
        let r = rbac(&[
            pods_reader(),
            crb(
                "u",
                "pod-reader",
                json!([{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "alice"}]),
            ),
            crb(
                "g",
                "pod-reader",
                json!([{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "devs"}]),
            ),
            crb(
                "sa",
                "pod-reader",
                json!([{"kind": "ServiceAccount", "name": "robot", "namespace": "ci"}]),
            ),
            crb(
                "sas",
                "pod-reader",
                json!([{"kind": "Group", "name": "system:serviceaccounts:prod"}]),
            ),
        ]);
        let alice = User::new("alice", &["system:authenticated"]);
        assert_eq!(
            r.authorize(&alice, &list_pods("x")),
            Decision::Allow(r#"RBAC: allowed by ClusterRoleBinding "u" of ClusterRole "pod-reader" to User "alice""#.into())
        );
        assert_eq!(
            r.authorize(&bob(), &list_pods("")),
            Decision::Allow(r#"RBAC: allowed by ClusterRoleBinding "g" of ClusterRole "pod-reader" to Group "devs""#.into())
        );
        assert_eq!(
            r.authorize(&User::service_account("ci", "robot"), &list_pods("y")),
            Decision::Allow(r#"RBAC: allowed by ClusterRoleBinding "sa" of ClusterRole "pod-reader" to ServiceAccount "robot/ci""#.into())
        );
        // Another namespace's SA of the same name is someone else.
        assert!(!r
            .authorize(&User::service_account("other", "robot"), &list_pods("y"))
            .allowed());
        // Namespace group from the SA authenticator.
        assert!(r
            .authorize(&User::service_account("prod", "any"), &list_pods("y"))
            .allowed());
        // A cluster SA subject without namespace matches nobody.
        let r2 = rbac(&[
            pods_reader(),
            crb(
                "sa",
                "pod-reader",
                json!([{"kind": "ServiceAccount", "name": "robot"}]),
            ),
        ]);
        assert!(!r2
            .authorize(&User::service_account("", "robot"), &list_pods("y"))
            .allowed());
        // Verb not granted.
        assert!(!r
            .authorize(
                &alice,
                &Attributes::resource("delete", "", "pods", "x", "p")
            )
            .allowed());
    }

    #[test]
    fn role_bindings_only_in_their_namespace() {
        let r = rbac(&[
            pods_reader(),
            json!({"kind": "Role", "metadata": {"name": "cm", "namespace": "team"},
                   "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["*"]}]}),
            rb(
                "team",
                "b1",
                "Role",
                "cm",
                json!([{"kind": "User", "name": "bob"}]),
            ),
            rb(
                "team",
                "b2",
                "ClusterRole",
                "pod-reader",
                json!([{"kind": "ServiceAccount", "name": "default"}]),
            ),
        ]);
        let cm = |ns: &str| Attributes::resource("create", "", "configmaps", ns, "");
        assert_eq!(
            r.authorize(&bob(), &cm("team")),
            Decision::Allow(
                r#"RBAC: allowed by RoleBinding "b1/team" of Role "cm" to User "bob""#.into()
            )
        );
        assert!(!r.authorize(&bob(), &cm("other")).allowed());
        // Cluster-scoped request: role bindings never apply.
        assert!(!r.authorize(&bob(), &cm("")).allowed());
        // SA subject without a namespace takes the binding's.
        assert_eq!(
            r.authorize(&User::service_account("team", "default"), &list_pods("team")),
            Decision::Allow(r#"RBAC: allowed by RoleBinding "b2/team" of ClusterRole "pod-reader" to ServiceAccount "default/team""#.into())
        );
        assert!(!r
            .authorize(&User::service_account("team", "default"), &list_pods("x"))
            .allowed());
    }

    #[test]
    fn resolution_errors_are_the_deny_reason() {
        let r = rbac(&[
            crb("missing", "nope", json!([{"kind": "User", "name": "bob"}])),
            rb(
                "ns",
                "r1",
                "Role",
                "gone",
                json!([{"kind": "User", "name": "bob"}]),
            ),
            rb(
                "ns",
                "r2",
                "Role",
                "gone",
                json!([{"kind": "Group", "name": "devs"}]),
            ),
            rb(
                "ns",
                "r3",
                "Other",
                "x",
                json!([{"kind": "User", "name": "bob"}]),
            ),
        ]);
        assert_eq!(
            r.authorize(&bob(), &list_pods("")),
            Decision::NoOpinion(
                r#"RBAC: clusterrole.rbac.authorization.k8s.io "nope" not found"#.into()
            )
        );
        assert_eq!(
            r.authorize(&bob(), &list_pods("ns")),
            Decision::NoOpinion(
                r#"RBAC: [clusterrole.rbac.authorization.k8s.io "nope" not found, role.rbac.authorization.k8s.io "gone" not found, unsupported role reference kind: "Other"]"#.into()
            )
        );
        // A bound rule that allows wins despite errors elsewhere.
        let mut objs = vec![
            pods_reader(),
            crb("ok", "pod-reader", json!([{"kind": "User", "name": "bob"}])),
        ];
        objs.push(crb(
            "a-missing",
            "nope",
            json!([{"kind": "User", "name": "bob"}]),
        ));
        assert!(rbac(&objs).authorize(&bob(), &list_pods("")).allowed());
        // An unsynced source is an error, not a silent deny.
        let empty = Rbac::new(Arc::new(PolicyCache::new()));
        assert_eq!(
            empty.authorize(&bob(), &list_pods("")),
            Decision::NoOpinion("RBAC: clusterrolebindings cache not synced yet".into())
        );
    }

    #[test]
    fn aggregated_cluster_roles_recursively() {
        let agg = |name: &str, label: &str, extra: Value| {
            let mut v = json!({"kind": "ClusterRole",
                "metadata": {"name": name, "labels": extra},
                "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {label: "true"}}]},
                "rules": [{"apiGroups": ["stale"], "resources": ["x"], "verbs": ["*"]}]});
            if v["metadata"]["labels"].is_null() {
                v["metadata"].as_object_mut().unwrap().remove("labels");
            }
            v
        };
        let r = rbac(&[
            agg("admin", "to-admin", Value::Null),
            agg("edit", "to-edit", json!({"to-admin": "true"})),
            json!({"kind": "ClusterRole", "metadata": {"name": "edit-rules", "labels": {"to-edit": "true"}},
                   "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}]}),
            json!({"kind": "ClusterRole", "metadata": {"name": "admin-rules", "labels": {"to-admin": "true"}},
                   "rules": [{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "verbs": ["create"]},
                             {"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}]}),
            // Matches by expression; cycles back to admin.
            json!({"kind": "ClusterRole", "metadata": {"name": "cyc", "labels": {"to-edit": "true"}},
                   "aggregationRule": {"clusterRoleSelectors": [{"matchExpressions": [{"key": "to-admin", "operator": "Exists"}]}]},
                   "rules": []}),
            rb(
                "ns",
                "a",
                "ClusterRole",
                "admin",
                json!([{"kind": "User", "name": "bob"}]),
            ),
            rb(
                "ns",
                "e",
                "ClusterRole",
                "edit",
                json!([{"kind": "User", "name": "eve"}]),
            ),
        ]);
        let create = |res: &str, g: &str| Attributes::resource("create", g, res, "ns", "");
        assert!(r.authorize(&bob(), &create("pods", "")).allowed());
        assert!(r
            .authorize(&bob(), &create("roles", "rbac.authorization.k8s.io"))
            .allowed());
        let eve = User::new("eve", &[]);
        assert!(r.authorize(&eve, &create("pods", "")).allowed());
        // Stored rules of an aggregated role are replaced, as the controller would.
        assert!(!r.authorize(&eve, &create("x", "stale")).allowed());
        // Rules are de-duplicated.
        let admin = r.source().get_cluster_role("admin").unwrap();
        let rules = r.cluster_role_rules(&admin).unwrap();
        let pods_create = rules
            .iter()
            .filter(|p| p.resources.as_deref() == Some(&["pods".to_string()][..]))
            .count();
        assert_eq!(pods_create, 1, "{rules:?}");
    }

    #[test]
    fn non_resource_requests_only_via_cluster_bindings() {
        let r = rbac(&[
            cluster_role(
                "disc",
                json!([{"nonResourceURLs": ["/apis/*", "/healthz"], "verbs": ["get"]}]),
            ),
            crb(
                "d",
                "disc",
                json!([{"kind": "Group", "name": "system:authenticated"}]),
            ),
        ]);
        assert!(r
            .authorize(&bob(), &Attributes::non_resource("get", "/apis/apps/v1"))
            .allowed());
        assert!(!r
            .authorize(&bob(), &Attributes::non_resource("get", "/metrics"))
            .allowed());
        assert!(!r
            .authorize(
                &User::new("x", &["system:unauthenticated"]),
                &Attributes::non_resource("get", "/healthz")
            )
            .allowed());
    }

    #[test]
    fn rules_for_splits_and_reports_errors() {
        let r = rbac(&[
            cluster_role(
                "mixed",
                json!([{"apiGroups": [""], "resources": ["pods"], "resourceNames": ["p"], "verbs": ["get"]},
                       {"nonResourceURLs": ["/healthz"], "verbs": ["get"]}]),
            ),
            crb("m", "mixed", json!([{"kind": "User", "name": "bob"}])),
            rb(
                "ns",
                "r",
                "Role",
                "missing",
                json!([{"kind": "User", "name": "bob"}]),
            ),
        ]);
        let all = r.rules_for(&bob(), "ns");
        assert_eq!(all.resource_rules.len(), 1);
        assert_eq!(
            all.resource_rules[0].resource_names.as_deref(),
            Some(&["p".to_string()][..])
        );
        assert_eq!(all.non_resource_rules.len(), 1);
        assert_eq!(
            all.evaluation_error.as_deref(),
            Some(r#"role.rbac.authorization.k8s.io "missing" not found"#)
        );
        assert_eq!(r.rules_for(&bob(), "").evaluation_error, None);
    }

    #[test]
    fn aggregate_error_text() {
        let e = |n: &str| ResolveError::Source(SourceError::role_not_found(n));
        assert_eq!(aggregate_errors(&[]), "");
        assert_eq!(
            aggregate_errors(&[e("a"), e("a")]),
            r#"role.rbac.authorization.k8s.io "a" not found"#
        );
        assert_eq!(
            aggregate_errors(&[e("a"), e("b"), e("a")]),
            r#"[role.rbac.authorization.k8s.io "a" not found, role.rbac.authorization.k8s.io "b" not found]"#
        );
    }
}
