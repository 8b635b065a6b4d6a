//! The bootstrap policy through the evaluator: each component identity gets what upstream's
//! default roles give it, and no more in the spots checked.

use std::sync::Arc;

use kelson_rbac::bootstrap::{self, AUTOUPDATE_ANNOTATION, BOOTSTRAPPING_LABEL};
use kelson_rbac::{Attributes, PolicyCache, Rbac, User};
use serde_json::{json, Value};

fn rbac_with(extra: &[Value]) -> Rbac {
    let mut objs = bootstrap::objects();
    objs.extend_from_slice(extra);
    Rbac::new(Arc::new(PolicyCache::from_objects(&objs).unwrap()))
}

fn can(
    r: &Rbac,
    user: &User,
    verb: &str,
    group: &str,
    resource: &str,
    ns: &str,
    name: &str,
) -> bool {
    r.authorize(user, &Attributes::resource(verb, group, resource, ns, name))
        .allowed()
}

fn can_url(r: &Rbac, user: &User, verb: &str, path: &str) -> bool {
    r.authorize(user, &Attributes::non_resource(verb, path))
        .allowed()
}

fn user(name: &str) -> User {
    User::new(name, &["system:authenticated"])
}

#[test]
fn every_object_is_labelled_annotated_and_decodable() {
    let objs = bootstrap::objects();
    assert!(objs.len() > 40, "{}", objs.len());
    let mut names = std::collections::HashSet::new();
    for o in &objs {
        assert_eq!(o["apiVersion"], "rbac.authorization.k8s.io/v1");
        assert_eq!(
            o["metadata"]["labels"][BOOTSTRAPPING_LABEL], "rbac-defaults",
            "{o}"
        );
        assert_eq!(
            o["metadata"]["annotations"][AUTOUPDATE_ANNOTATION], "true",
            "{o}"
        );
        assert!(
            names.insert(format!("{}/{}", o["kind"], o["metadata"]["name"])),
            "dup {o}"
        );
    }
    // Every binding refers to a bootstrap role.
    let roles: Vec<&Value> = objs.iter().filter(|o| o["kind"] == "ClusterRole").collect();
    for b in bootstrap::cluster_role_bindings() {
        let name = &b["roleRef"]["name"];
        assert!(roles.iter().any(|r| r["metadata"]["name"] == *name), "{b}");
    }
    for wanted in [
        "cluster-admin",
        "admin",
        "edit",
        "view",
        "system:basic-user",
        "system:discovery",
        "system:public-info-viewer",
        "system:kube-scheduler",
        "system:kube-controller-manager",
        "system:node",
        "system:node-proxier",
        "system:kube-dns",
        "system:monitoring",
    ] {
        assert!(
            roles.iter().any(|r| r["metadata"]["name"] == wanted),
            "{wanted}"
        );
    }
    // The whole policy resolves without errors for a user bound to everything aggregated.
    let r = rbac_with(&[]);
    let rules = r.rules_for(
        &User::new(
            "system:kube-scheduler",
            &["system:authenticated", "system:masters"],
        ),
        "default",
    );
    assert_eq!(rules.evaluation_error, None);
}

#[test]
fn scheduler_gets_upstreams_rules() {
    let r = rbac_with(&[]);
    let s = user("system:kube-scheduler");
    assert!(can(&r, &s, "create", "", "pods/binding", "default", "p"));
    assert!(can(&r, &s, "create", "", "bindings", "default", ""));
    assert!(can(&r, &s, "patch", "", "pods/status", "default", "p"));
    assert!(can(&r, &s, "watch", "", "pods", "", ""));
    assert!(can(&r, &s, "delete", "", "pods", "default", "victim"));
    assert!(can(&r, &s, "list", "", "nodes", "", ""));
    assert!(can(
        &r,
        &s,
        "create",
        "coordination.k8s.io",
        "leases",
        "kube-system",
        ""
    ));
    assert!(can(
        &r,
        &s,
        "update",
        "coordination.k8s.io",
        "leases",
        "kube-system",
        "kube-scheduler"
    ));
    assert!(!can(
        &r,
        &s,
        "update",
        "coordination.k8s.io",
        "leases",
        "kube-system",
        "kube-controller-manager"
    ));
    assert!(can(
        &r,
        &s,
        "create",
        "events.k8s.io",
        "events",
        "default",
        ""
    ));
    assert!(can(
        &r,
        &s,
        "list",
        "policy",
        "poddisruptionbudgets",
        "",
        ""
    ));
    assert!(can(&r, &s, "list", "storage.k8s.io", "csinodes", "", ""));
    // system:volume-scheduler is bound to the scheduler too.
    assert!(can(&r, &s, "patch", "", "persistentvolumes", "", "pv"));
    assert!(!can(&r, &s, "get", "", "secrets", "default", "s"));
    assert!(!can(&r, &s, "delete", "", "nodes", "", "n"));
    assert!(!can(&r, &s, "create", "apps", "deployments", "default", ""));
    assert!(can_url(&r, &s, "get", "/apis/apps/v1"));
}

#[test]
fn controller_manager_gets_upstreams_rules() {
    let r = rbac_with(&[]);
    let c = user("system:kube-controller-manager");
    assert!(can(&r, &c, "list", "apps", "deployments", "", ""));
    assert!(can(
        &r,
        &c,
        "watch",
        "anything.example.com",
        "widgets",
        "x",
        ""
    ));
    assert!(can(
        &r,
        &c,
        "create",
        "",
        "serviceaccounts/token",
        "kube-system",
        "attachdetach-controller"
    ));
    assert!(can(
        &r,
        &c,
        "get",
        "coordination.k8s.io",
        "leases",
        "kube-system",
        "kube-controller-manager"
    ));
    assert!(can(&r, &c, "create", "", "secrets", "default", ""));
    assert!(can(&r, &c, "get", "", "namespaces", "", "default"));
    assert!(can(
        &r,
        &c,
        "create",
        "authorization.k8s.io",
        "subjectaccessreviews",
        "",
        ""
    ));
    assert!(!can(&r, &c, "get", "apps", "deployments", "default", "web"));
    assert!(!can(&r, &c, "create", "", "pods", "default", ""));
    assert!(!can(
        &r,
        &c,
        "update",
        "coordination.k8s.io",
        "leases",
        "kube-system",
        "kube-scheduler"
    ));
}

#[test]
fn nodes_get_system_node_rules() {
    let r = rbac_with(&[]);
    let n = User::new(
        "system:node:worker-1",
        &["system:nodes", "system:authenticated"],
    );
    assert!(can(&r, &n, "create", "", "nodes", "", ""));
    assert!(can(&r, &n, "patch", "", "nodes/status", "", "worker-1"));
    assert!(can(
        &r,
        &n,
        "update",
        "coordination.k8s.io",
        "leases",
        "kube-node-lease",
        "worker-1"
    ));
    assert!(can(&r, &n, "watch", "", "pods", "", ""));
    assert!(can(&r, &n, "update", "", "pods/status", "default", "p"));
    assert!(can(&r, &n, "get", "", "secrets", "default", "s"));
    assert!(can(&r, &n, "create", "", "events", "default", ""));
    assert!(can(&r, &n, "list", "node.k8s.io", "runtimeclasses", "", ""));
    assert!(!can(&r, &n, "delete", "", "nodes", "", "worker-1"));
    assert!(!can(&r, &n, "create", "apps", "deployments", "default", ""));
    assert!(!can(&r, &n, "update", "", "pods", "default", "p"));
    // The user name alone (without the group) gets nothing.
    assert!(!can(
        &r,
        &user("system:node:worker-1"),
        "create",
        "",
        "nodes",
        "",
        ""
    ));
}

#[test]
fn with_the_node_authorizer_rbac_grants_nodes_nothing() {
    // Upstream's binding: no subjects, the Node authorizer decides (per node) instead.
    let objs = bootstrap::objects_for(true);
    let r = Rbac::new(Arc::new(PolicyCache::from_objects(&objs).unwrap()));
    let n = User::new(
        "system:node:worker-1",
        &["system:nodes", "system:authenticated"],
    );
    assert!(!can(&r, &n, "get", "", "nodes", "", "worker-2"));
    assert!(!can(&r, &n, "get", "", "secrets", "default", "s"));
    // Everything else in the policy is unchanged, and the role itself still exists.
    assert_eq!(objs.len(), bootstrap::objects().len());
    assert!(objs
        .iter()
        .any(|o| o["kind"] == "ClusterRole" && o["metadata"]["name"] == "system:node"));
    assert_eq!(bootstrap::node_rules().len(), 22);
}

#[test]
fn proxier_dns_monitoring_and_service_accounts() {
    let r = rbac_with(&[]);
    let p = user("system:kube-proxy");
    assert!(can(
        &r,
        &p,
        "watch",
        "discovery.k8s.io",
        "endpointslices",
        "",
        ""
    ));
    assert!(can(&r, &p, "list", "", "services", "", ""));
    assert!(!can(&r, &p, "get", "", "services", "default", "x"));
    let dns = User::service_account("kube-system", "kube-dns");
    assert!(can(&r, &dns, "list", "", "endpoints", "", ""));
    assert!(!can(
        &r,
        &User::service_account("default", "kube-dns"),
        "list",
        "",
        "endpoints",
        "",
        ""
    ));
    let mon = User::new("prometheus", &["system:monitoring", "system:authenticated"]);
    assert!(can_url(&r, &mon, "get", "/metrics"));
    assert!(can_url(&r, &mon, "get", "/readyz/etcd"));
    assert!(!can_url(&r, &user("bob"), "get", "/metrics"));
    let sa = User::service_account("default", "app");
    assert!(can_url(&r, &sa, "get", "/openid/v1/jwks"));
    assert!(!can(&r, &sa, "list", "", "pods", "default", ""));
}

#[test]
fn everyone_and_anonymous() {
    let r = rbac_with(&[]);
    let bob = user("bob");
    assert!(can(
        &r,
        &bob,
        "create",
        "authorization.k8s.io",
        "selfsubjectaccessreviews",
        "",
        ""
    ));
    assert!(can(
        &r,
        &bob,
        "create",
        "authorization.k8s.io",
        "selfsubjectrulesreviews",
        "",
        ""
    ));
    assert!(can(
        &r,
        &bob,
        "create",
        "authentication.k8s.io",
        "selfsubjectreviews",
        "",
        ""
    ));
    assert!(can_url(&r, &bob, "get", "/api/v1"));
    assert!(can_url(&r, &bob, "get", "/openapi/v3"));
    assert!(can_url(&r, &bob, "get", "/version"));
    assert!(!can(&r, &bob, "list", "", "pods", "default", ""));
    assert!(!can(&r, &bob, "list", "", "namespaces", "", ""));
    let anon = User::new("system:anonymous", &["system:unauthenticated"]);
    assert!(can_url(&r, &anon, "get", "/healthz"));
    assert!(can_url(&r, &anon, "get", "/version"));
    assert!(!can_url(&r, &anon, "get", "/apis"));
    assert!(!can(
        &r,
        &anon,
        "create",
        "authorization.k8s.io",
        "selfsubjectaccessreviews",
        "",
        ""
    ));
    let admin = User::new("root", &["system:masters"]);
    assert!(can(
        &r,
        &admin,
        "escalate",
        "rbac.authorization.k8s.io",
        "clusterroles",
        "",
        "x"
    ));
    assert!(can_url(&r, &admin, "post", "/anything"));
}

fn bind(ns: &str, role: &str, user: &str) -> Value {
    json!({"kind": "RoleBinding", "metadata": {"name": format!("{role}-{user}"), "namespace": ns},
           "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
           "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]})
}

#[test]
fn admin_edit_view_aggregate() {
    let custom = json!({"kind": "ClusterRole", "metadata": {"name": "widgets-view",
        "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}},
        "rules": [{"apiGroups": ["example.com"], "resources": ["widgets"], "verbs": ["get", "list"]}]});
    let r = rbac_with(&[
        bind("team", "view", "vic"),
        bind("team", "edit", "eve"),
        bind("team", "admin", "ada"),
        custom,
    ]);
    let (vic, eve, ada) = (user("vic"), user("eve"), user("ada"));
    for u in [&vic, &eve, &ada] {
        assert!(can(&r, u, "list", "", "pods", "team", ""), "{u:?}");
        assert!(
            can(&r, u, "get", "apps", "deployments/scale", "team", "web"),
            "{u:?}"
        );
        assert!(
            can(&r, u, "list", "example.com", "widgets", "team", ""),
            "{u:?}"
        );
        assert!(!can(&r, u, "list", "", "pods", "other", ""), "{u:?}");
    }
    assert!(!can(&r, &vic, "get", "", "secrets", "team", "s"));
    assert!(!can(&r, &vic, "create", "", "pods", "team", ""));
    assert!(can(&r, &eve, "get", "", "secrets", "team", "s"));
    assert!(can(&r, &eve, "create", "apps", "deployments", "team", ""));
    assert!(can(&r, &eve, "create", "", "pods/exec", "team", "p"));
    assert!(!can(
        &r,
        &eve,
        "create",
        "rbac.authorization.k8s.io",
        "rolebindings",
        "team",
        ""
    ));
    assert!(can(
        &r,
        &ada,
        "create",
        "rbac.authorization.k8s.io",
        "rolebindings",
        "team",
        ""
    ));
    assert!(can(
        &r,
        &ada,
        "create",
        "authorization.k8s.io",
        "localsubjectaccessreviews",
        "team",
        ""
    ));
    assert!(can(&r, &ada, "delete", "batch", "jobs", "team", "j"));
    assert!(!can(&r, &ada, "delete", "", "namespaces", "", "team"));
}
