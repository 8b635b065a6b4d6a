//! The default policy: upstream's `bootstrappolicy` ClusterRoles and ClusterRoleBindings.
//!
//! The API server creates these at start when they are missing (an existing object is left
//! alone: an administrator may have changed it; upstream's reconciliation of
//! `autoupdate: "true"` objects is a later step). Every object carries upstream's
//! `kubernetes.io/bootstrapping: rbac-defaults` label and
//! `rbac.authorization.kubernetes.io/autoupdate: "true"` annotation, so tooling that looks for
//! them (and `kubectl auth reconcile`) treats them as upstream's.
//!
//! The rules are upstream's (1.33, feature gates at their defaults), written out in the
//! compact form upstream's own test fixtures use. One deliberate difference: upstream's
//! `system:node` binding has no subjects because its Node authorizer grants kubelets their
//! (object-scoped) access; Kelson does the same when the Node authorizer runs
//! ([`objects_for`]), and otherwise (`--authorization-mode=RBAC` alone) the binding names the
//! `system:nodes` group, which is what upstream did before the Node authorizer existed.
//!
//! `admin`, `edit` and `view` are aggregated (their rules come from the
//! `system:aggregate-to-*` roles and any user ClusterRole carrying the matching
//! `rbac.authorization.k8s.io/aggregate-to-*: "true"` label); `edit` aggregates into `admin` and
//! `view` into `edit`, so the evaluator's recursive aggregation gives admin ⊇ edit ⊇ view.

use k8s_openapi::api::rbac::v1::PolicyRule;
use serde_json::{json, Value};

use crate::rule::{named_rule, resource_rule, url_rule};

/// Label on every bootstrap object.
pub const BOOTSTRAPPING_LABEL: &str = "kubernetes.io/bootstrapping";
pub const BOOTSTRAPPING_VALUE: &str = "rbac-defaults";
/// Annotation allowing the API server to reconcile the object.
pub const AUTOUPDATE_ANNOTATION: &str = "rbac.authorization.kubernetes.io/autoupdate";
pub const API_VERSION: &str = "rbac.authorization.k8s.io/v1";

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const READ_WRITE: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
const EVENT_WRITE: &[&str] = &["create", "patch", "update"];

fn r(verbs: &[&str], groups: &[&str], resources: &[&str]) -> PolicyRule {
    resource_rule(verbs, groups, resources)
}

fn metadata(name: &str, extra_labels: &[(&str, &str)]) -> Value {
    let mut labels = serde_json::Map::new();
    labels.insert(BOOTSTRAPPING_LABEL.into(), json!(BOOTSTRAPPING_VALUE));
    for (k, v) in extra_labels {
        labels.insert((*k).into(), json!(v));
    }
    json!({"name": name, "labels": labels, "annotations": {AUTOUPDATE_ANNOTATION: "true"}})
}

fn role(name: &str, labels: &[(&str, &str)], rules: Vec<PolicyRule>) -> Value {
    json!({"apiVersion": API_VERSION, "kind": "ClusterRole",
           "metadata": metadata(name, labels), "rules": rules})
}

fn aggregated(name: &str, labels: &[(&str, &str)], to: &str) -> Value {
    json!({"apiVersion": API_VERSION, "kind": "ClusterRole",
           "metadata": metadata(name, labels),
           "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {to: "true"}}]},
           "rules": []})
}

const TO_ADMIN: &str = "rbac.authorization.k8s.io/aggregate-to-admin";
const TO_EDIT: &str = "rbac.authorization.k8s.io/aggregate-to-edit";
const TO_VIEW: &str = "rbac.authorization.k8s.io/aggregate-to-view";

fn aggregate_to_admin() -> Vec<PolicyRule> {
    vec![
        r(
            &["create"],
            &["authorization.k8s.io"],
            &["localsubjectaccessreviews"],
        ),
        r(
            READ_WRITE,
            &["rbac.authorization.k8s.io"],
            &["rolebindings", "roles"],
        ),
    ]
}

fn aggregate_to_edit() -> Vec<PolicyRule> {
    vec![
        r(
            READ,
            &[""],
            &[
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
                "secrets",
                "services/proxy",
            ],
        ),
        r(&["impersonate"], &[""], &["serviceaccounts"]),
        r(
            WRITE,
            &[""],
            &[
                "pods",
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
            ],
        ),
        r(&["create"], &[""], &["pods/eviction"]),
        r(
            WRITE,
            &[""],
            &[
                "configmaps",
                "events",
                "persistentvolumeclaims",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "secrets",
                "serviceaccounts",
                "services",
                "services/proxy",
            ],
        ),
        r(&["create"], &[""], &["serviceaccounts/token"]),
        r(
            WRITE,
            &["apps"],
            &[
                "daemonsets",
                "deployments",
                "deployments/rollback",
                "deployments/scale",
                "replicasets",
                "replicasets/scale",
                "statefulsets",
                "statefulsets/scale",
            ],
        ),
        r(WRITE, &["autoscaling"], &["horizontalpodautoscalers"]),
        r(WRITE, &["batch"], &["cronjobs", "jobs"]),
        r(
            WRITE,
            &["extensions"],
            &[
                "daemonsets",
                "deployments",
                "deployments/rollback",
                "deployments/scale",
                "ingresses",
                "networkpolicies",
                "replicasets",
                "replicasets/scale",
                "replicationcontrollers/scale",
            ],
        ),
        r(WRITE, &["policy"], &["poddisruptionbudgets"]),
        r(
            WRITE,
            &["networking.k8s.io"],
            &["ingresses", "networkpolicies"],
        ),
        r(READ_WRITE, &["coordination.k8s.io"], &["leases"]),
    ]
}

fn aggregate_to_view() -> Vec<PolicyRule> {
    vec![
        r(
            READ,
            &[""],
            &[
                "configmaps",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "pods",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/status",
            ],
        ),
        r(
            READ,
            &[""],
            &[
                "bindings",
                "events",
                "limitranges",
                "namespaces/status",
                "pods/log",
                "pods/status",
                "replicationcontrollers/status",
                "resourcequotas",
                "resourcequotas/status",
            ],
        ),
        r(READ, &[""], &["namespaces"]),
        r(READ, &["discovery.k8s.io"], &["endpointslices"]),
        r(
            READ,
            &["apps"],
            &[
                "controllerrevisions",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "statefulsets",
                "statefulsets/scale",
                "statefulsets/status",
            ],
        ),
        r(
            READ,
            &["autoscaling"],
            &[
                "horizontalpodautoscalers",
                "horizontalpodautoscalers/status",
            ],
        ),
        r(
            READ,
            &["batch"],
            &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
        ),
        r(
            READ,
            &["extensions"],
            &[
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "ingresses",
                "ingresses/status",
                "networkpolicies",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "replicationcontrollers/scale",
            ],
        ),
        r(
            READ,
            &["policy"],
            &["poddisruptionbudgets", "poddisruptionbudgets/status"],
        ),
        r(
            READ,
            &["networking.k8s.io"],
            &["ingresses", "ingresses/status", "networkpolicies"],
        ),
    ]
}

fn kube_controller_manager() -> Vec<PolicyRule> {
    vec![
        r(EVENT_WRITE, &["", "events.k8s.io"], &["events"]),
        r(&["create"], &["coordination.k8s.io"], &["leases"]),
        named_rule(
            &["get", "update"],
            &["coordination.k8s.io"],
            &["leases"],
            &["kube-controller-manager"],
        ),
        r(&["create"], &[""], &["secrets", "serviceaccounts"]),
        r(&["delete"], &[""], &["secrets"]),
        r(
            &["get"],
            &[""],
            &["configmaps", "namespaces", "secrets", "serviceaccounts"],
        ),
        r(&["update"], &[""], &["secrets", "serviceaccounts"]),
        r(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        r(
            &["create"],
            &["authorization.k8s.io"],
            &["subjectaccessreviews"],
        ),
        r(&["list", "watch"], &["*"], &["*"]),
        r(&["create"], &[""], &["serviceaccounts/token"]),
    ]
}

fn kube_scheduler() -> Vec<PolicyRule> {
    vec![
        r(EVENT_WRITE, &["", "events.k8s.io"], &["events"]),
        r(&["create"], &["coordination.k8s.io"], &["leases"]),
        named_rule(
            &["get", "update"],
            &["coordination.k8s.io"],
            &["leases"],
            &["kube-scheduler"],
        ),
        r(READ, &[""], &["nodes"]),
        r(&["delete", "get", "list", "watch"], &[""], &["pods"]),
        r(&["create"], &[""], &["bindings", "pods/binding"]),
        r(&["patch", "update"], &[""], &["pods/status"]),
        r(READ, &[""], &["replicationcontrollers", "services"]),
        r(READ, &["apps", "extensions"], &["replicasets"]),
        r(READ, &["apps"], &["statefulsets"]),
        r(READ, &["policy"], &["poddisruptionbudgets"]),
        r(
            READ,
            &[""],
            &["persistentvolumeclaims", "persistentvolumes"],
        ),
        r(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        r(
            &["create"],
            &["authorization.k8s.io"],
            &["subjectaccessreviews"],
        ),
        r(READ, &["storage.k8s.io"], &["csinodes"]),
        r(READ, &[""], &["namespaces"]),
        r(READ, &["storage.k8s.io"], &["csidrivers"]),
        r(READ, &["storage.k8s.io"], &["csistoragecapacities"]),
        // Not upstream's: kelson-scheduler resolves pod priority from PriorityClasses itself
        // (it watches them), so under its own identity it needs to read them.
        r(READ, &["scheduling.k8s.io"], &["priorityclasses"]),
    ]
}

/// The `system:node` ClusterRole's rules: what the Node authorizer grants a kubelet for the
/// resources it does not subdivide per node (upstream's `NodeRules()`).
pub fn node_rules() -> Vec<PolicyRule> {
    node()
}

fn node() -> Vec<PolicyRule> {
    vec![
        r(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        r(
            &["create"],
            &["authorization.k8s.io"],
            &["localsubjectaccessreviews", "subjectaccessreviews"],
        ),
        r(READ, &[""], &["services"]),
        r(&["create", "get", "list", "watch"], &[""], &["nodes"]),
        r(&["patch", "update"], &[""], &["nodes/status"]),
        r(&["patch", "update"], &[""], &["nodes"]),
        r(EVENT_WRITE, &[""], &["events"]),
        r(READ, &[""], &["pods"]),
        r(&["create", "delete"], &[""], &["pods"]),
        r(&["patch", "update"], &[""], &["pods/status"]),
        r(&["create"], &[""], &["pods/eviction"]),
        r(READ, &[""], &["configmaps", "secrets"]),
        r(
            &["get"],
            &[""],
            &["persistentvolumeclaims", "persistentvolumes"],
        ),
        r(&["get"], &[""], &["endpoints"]),
        r(
            &["create", "get", "list", "watch"],
            &["certificates.k8s.io"],
            &["certificatesigningrequests"],
        ),
        r(
            &["create", "delete", "get", "patch", "update"],
            &["coordination.k8s.io"],
            &["leases"],
        ),
        r(&["get"], &["storage.k8s.io"], &["volumeattachments"]),
        r(&["create"], &[""], &["serviceaccounts/token"]),
        r(
            &["get", "patch", "update"],
            &[""],
            &["persistentvolumeclaims/status"],
        ),
        r(READ, &["storage.k8s.io"], &["csidrivers"]),
        r(
            &["create", "delete", "get", "patch", "update"],
            &["storage.k8s.io"],
            &["csinodes"],
        ),
        r(READ, &["node.k8s.io"], &["runtimeclasses"]),
    ]
}

fn approver(signer: &str) -> Vec<PolicyRule> {
    vec![named_rule(
        &["approve"],
        &["certificates.k8s.io"],
        &["signers"],
        &[signer],
    )]
}

/// Upstream's default ClusterRoles.
pub fn cluster_roles() -> Vec<Value> {
    vec![
        aggregated("admin", &[], TO_ADMIN),
        role(
            "cluster-admin",
            &[],
            vec![r(&["*"], &["*"], &["*"]), url_rule(&["*"], &["*"])],
        ),
        aggregated("edit", &[(TO_ADMIN, "true")], TO_EDIT),
        role(
            "system:aggregate-to-admin",
            &[(TO_ADMIN, "true")],
            aggregate_to_admin(),
        ),
        role(
            "system:aggregate-to-edit",
            &[(TO_EDIT, "true")],
            aggregate_to_edit(),
        ),
        role(
            "system:aggregate-to-view",
            &[(TO_VIEW, "true")],
            aggregate_to_view(),
        ),
        role(
            "system:auth-delegator",
            &[],
            vec![
                r(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                r(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
            ],
        ),
        role(
            "system:basic-user",
            &[],
            vec![
                r(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                r(
                    &["create"],
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                ),
            ],
        ),
        role(
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            &[],
            vec![r(
                &["create"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests/nodeclient"],
            )],
        ),
        role(
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            &[],
            vec![r(
                &["create"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests/selfnodeclient"],
            )],
        ),
        role(
            "system:certificates.k8s.io:kube-apiserver-client-approver",
            &[],
            approver("kubernetes.io/kube-apiserver-client"),
        ),
        role(
            "system:certificates.k8s.io:kube-apiserver-client-kubelet-approver",
            &[],
            approver("kubernetes.io/kube-apiserver-client-kubelet"),
        ),
        role(
            "system:certificates.k8s.io:kubelet-serving-approver",
            &[],
            approver("kubernetes.io/kubelet-serving"),
        ),
        role(
            "system:certificates.k8s.io:legacy-unknown-approver",
            &[],
            approver("kubernetes.io/legacy-unknown"),
        ),
        role(
            "system:discovery",
            &[],
            vec![url_rule(
                &["get"],
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
            )],
        ),
        role(
            "system:heapster",
            &[],
            vec![
                r(READ, &[""], &["events", "namespaces", "nodes", "pods"]),
                r(READ, &["extensions"], &["deployments"]),
            ],
        ),
        role(
            "system:kube-aggregator",
            &[],
            vec![r(READ, &[""], &["endpoints", "services"])],
        ),
        role(
            "system:kube-controller-manager",
            &[],
            kube_controller_manager(),
        ),
        role(
            "system:kube-dns",
            &[],
            vec![
                r(&["list", "watch"], &[""], &["endpoints", "services"]),
                // Not upstream's (kube-dns read Endpoints): kelson-dns, like CoreDNS under its
                // own system:coredns role, serves from EndpointSlices.
                r(
                    &["list", "watch"],
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                ),
            ],
        ),
        role("system:kube-scheduler", &[], kube_scheduler()),
        role(
            "system:kubelet-api-admin",
            &[],
            vec![
                r(READ, &[""], &["nodes"]),
                r(&["proxy"], &[""], &["nodes"]),
                r(
                    &["*"],
                    &[""],
                    &["nodes/log", "nodes/metrics", "nodes/proxy", "nodes/stats"],
                ),
            ],
        ),
        role(
            "system:monitoring",
            &[],
            vec![url_rule(
                &["get"],
                &[
                    "/healthz",
                    "/healthz/*",
                    "/livez",
                    "/livez/*",
                    "/metrics",
                    "/metrics/slis",
                    "/readyz",
                    "/readyz/*",
                ],
            )],
        ),
        role("system:node", &[], node()),
        role(
            "system:node-bootstrapper",
            &[],
            vec![r(
                &["create", "get", "list", "watch"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests"],
            )],
        ),
        role(
            "system:node-problem-detector",
            &[],
            vec![
                r(&["get"], &[""], &["nodes"]),
                r(&["patch"], &[""], &["nodes/status"]),
                r(EVENT_WRITE, &["", "events.k8s.io"], &["events"]),
            ],
        ),
        role(
            "system:node-proxier",
            &[],
            vec![
                r(&["list", "watch"], &[""], &["endpoints", "services"]),
                r(READ, &[""], &["nodes"]),
                r(EVENT_WRITE, &["", "events.k8s.io"], &["events"]),
                r(
                    &["list", "watch"],
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                ),
            ],
        ),
        role(
            "system:persistent-volume-provisioner",
            &[],
            vec![
                r(
                    &["create", "delete", "get", "list", "watch"],
                    &[""],
                    &["persistentvolumes"],
                ),
                r(
                    &["get", "list", "update", "watch"],
                    &[""],
                    &["persistentvolumeclaims"],
                ),
                r(READ, &["storage.k8s.io"], &["storageclasses"]),
                r(&["watch"], &[""], &["events"]),
                r(EVENT_WRITE, &["", "events.k8s.io"], &["events"]),
            ],
        ),
        role(
            "system:public-info-viewer",
            &[],
            vec![url_rule(
                &["get"],
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
            )],
        ),
        role(
            "system:service-account-issuer-discovery",
            &[],
            vec![url_rule(
                &["get"],
                &["/.well-known/openid-configuration", "/openid/v1/jwks"],
            )],
        ),
        role(
            "system:volume-scheduler",
            &[],
            vec![
                r(
                    &["get", "list", "patch", "update", "watch"],
                    &[""],
                    &["persistentvolumes"],
                ),
                r(READ, &["storage.k8s.io"], &["storageclasses"]),
                r(
                    &["get", "list", "patch", "update", "watch"],
                    &[""],
                    &["persistentvolumeclaims"],
                ),
            ],
        ),
        aggregated("view", &[(TO_EDIT, "true")], TO_VIEW),
    ]
}

/// A binding subject: `("User", name)`, `("Group", name)` or `("ServiceAccount", "ns/name")`.
fn subject(kind: &str, name: &str) -> Value {
    match (kind, name.split_once('/')) {
        ("ServiceAccount", Some((ns, n))) => {
            json!({"kind": kind, "name": n, "namespace": ns})
        }
        _ => json!({"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name}),
    }
}

fn binding(role: &str, subjects: &[(&str, &str)]) -> Value {
    let subjects: Vec<Value> = subjects.iter().map(|(k, n)| subject(k, n)).collect();
    json!({"apiVersion": API_VERSION, "kind": "ClusterRoleBinding",
           "metadata": metadata(role, &[]),
           "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
           "subjects": subjects})
}

/// Upstream's default ClusterRoleBindings (each named after its role).
pub fn cluster_role_bindings() -> Vec<Value> {
    vec![
        binding("cluster-admin", &[("Group", "system:masters")]),
        binding("system:basic-user", &[("Group", "system:authenticated")]),
        binding("system:discovery", &[("Group", "system:authenticated")]),
        binding(
            "system:kube-controller-manager",
            &[("User", "system:kube-controller-manager")],
        ),
        binding(
            "system:kube-dns",
            &[("ServiceAccount", "kube-system/kube-dns")],
        ),
        binding(
            "system:kube-scheduler",
            &[("User", "system:kube-scheduler")],
        ),
        binding("system:monitoring", &[("Group", "system:monitoring")]),
        // Upstream: no subjects (the Node authorizer grants kubelets); see the module docs.
        binding("system:node", &[("Group", "system:nodes")]),
        binding("system:node-proxier", &[("User", "system:kube-proxy")]),
        binding(
            "system:public-info-viewer",
            &[
                ("Group", "system:authenticated"),
                ("Group", "system:unauthenticated"),
            ],
        ),
        binding(
            "system:service-account-issuer-discovery",
            &[("Group", "system:serviceaccounts")],
        ),
        binding(
            "system:volume-scheduler",
            &[("User", "system:kube-scheduler")],
        ),
        // Node TLS bootstrap, as kubeadm sets it up (its `kubeadm:` bindings under our name):
        // join tokens may create CSRs and have their node-client CSRs auto-approved; nodes
        // have their own client-certificate renewals auto-approved.
        named_binding(
            "kelson:kubelet-bootstrap",
            "system:node-bootstrapper",
            &[("Group", NODE_BOOTSTRAP_GROUP)],
        ),
        named_binding(
            "kelson:node-autoapprove-bootstrap",
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            &[("Group", NODE_BOOTSTRAP_GROUP)],
        ),
        named_binding(
            "kelson:node-autoapprove-certificate-rotation",
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            &[("Group", "system:nodes")],
        ),
    ]
}

/// The group of node-join bootstrap tokens (`kelsonctl token create`; kubeadm's
/// `system:bootstrappers:kubeadm:default-node-token` under our name).
pub const NODE_BOOTSTRAP_GROUP: &str = "system:bootstrappers:kelson:default-node-token";

/// A ClusterRoleBinding named differently from its role (Kelson's additions to upstream's
/// defaults; labelled like them, as part of the bootstrap policy).
fn named_binding(name: &str, role: &str, subjects: &[(&str, &str)]) -> Value {
    let mut b = binding(role, subjects);
    b["metadata"]["name"] = json!(name);
    b
}

/// Everything to create at start: roles before the bindings that refer to them.
pub fn objects() -> Vec<Value> {
    let mut v = cluster_roles();
    v.extend(cluster_role_bindings());
    v
}

/// [`objects`] for a server that runs the Node authorizer: then the `system:node` binding has
/// no subjects, exactly upstream's, so RBAC grants kubelets nothing and cannot undo the Node
/// authorizer's per-node restriction (reading another node's Node or Secrets).
pub fn objects_for(node_authorizer: bool) -> Vec<Value> {
    let mut v = objects();
    if node_authorizer {
        for o in &mut v {
            if o["kind"] == "ClusterRoleBinding" && o["metadata"]["name"] == "system:node" {
                if let Some(m) = o.as_object_mut() {
                    m.remove("subjects");
                }
            }
        }
    }
    v
}
