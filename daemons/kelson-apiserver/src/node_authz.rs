//! The Node authorizer (`--authorization-mode=Node,RBAC`), upstream's `NodeAuthorizer`.
//!
//! A kubelet authenticates as `system:node:<name>` in `system:nodes`. For the resources
//! upstream subdivides per node this authorizer decides alone, from a graph of what the node's
//! pods reference; for everything else it evaluates the static `system:node` rules
//! (`kelson_rbac::bootstrap::node_rules`). A refusal is "no opinion" with upstream's reason,
//! so the union falls through to RBAC — whose `system:node` binding has no subjects when
//! this mode runs (`kelson_rbac::bootstrap::objects_for`), so nothing grants it back.
//!
//! - Node: get/list/watch only its own Node (by name, so the kubelet may read it before it
//!   exists; a list or watch must select `metadata.name`, which the request resolver turns
//!   into the name, as upstream's); create/update/patch and status writes are allowed here
//!   and narrowed to its own Node by NodeRestriction admission.
//! - Pods: get and status writes and eviction only for pods bound to the node; list/watch
//!   and create/delete (mirror pods) from the static rules (NodeRestriction narrows creates).
//! - Secrets, ConfigMaps, PVCs: get/list/watch of one named object referenced by a pod bound
//!   to the node (volumes, projected sources, env, envFrom, imagePullSecrets).
//! - `serviceaccounts/token`: only for a service account a pod bound to the node runs as.
//! - Leases: only `kube-node-lease/<node name>`.
//!
//! The graph is fed like the RBAC cache: list pods, then watch from the list's revision,
//! relisting with a bounded backoff. Deviation: PersistentVolumes, VolumeAttachments,
//! ResourceClaims and CSINodes are not in the graph (Kelson serves none of them yet), so a
//! node reading a PersistentVolume gets "no relationship found".

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::rbac::v1::PolicyRule;
use kelson_apimachinery::ApiError;
use kelson_apistorage::{ListOptions, WatchEvent};
use serde_json::Value;

use crate::auth::{Attributes, Authorizer, Decision, User};
use crate::registry::{self, ResourceExt};
use crate::server::Api;

/// The group every node identity is in.
pub const NODES_GROUP: &str = "system:nodes";
/// The user name prefix of node identities.
pub const NODE_USER_PREFIX: &str = "system:node:";
/// Where node heartbeats (Leases) live.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// The node a user is (upstream's `nodeidentifier.NodeIdentity`): `Some("")` for a member of
/// `system:nodes` whose name lacks the node part, `None` for anyone who is not a node.
pub fn node_name(user: &User) -> Option<&str> {
    if !user.groups.iter().any(|g| g == NODES_GROUP) {
        return None;
    }
    user.name.strip_prefix(NODE_USER_PREFIX)
}

/// What one bound pod references.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct PodRefs {
    node: String,
    service_account: String,
    secrets: BTreeSet<String>,
    configmaps: BTreeSet<String>,
    pvcs: BTreeSet<String>,
}

impl PodRefs {
    /// The references of `pod`, as upstream's `podutil.VisitPodSecretNames` and friends
    /// collect them (containers, init and ephemeral containers, volumes, pull secrets).
    fn of(pod: &Value) -> PodRefs {
        let spec = &pod["spec"];
        let s = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(String::from);
        let mut r = PodRefs {
            node: s(&spec["nodeName"]).unwrap_or_default(),
            service_account: s(&spec["serviceAccountName"]).unwrap_or_default(),
            ..Default::default()
        };
        let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default();
        for ps in spec["imagePullSecrets"].as_array().into_iter().flatten() {
            r.secrets.extend(s(&ps["name"]));
        }
        for list in ["initContainers", "containers", "ephemeralContainers"] {
            for c in spec[list].as_array().into_iter().flatten() {
                for e in c["env"].as_array().into_iter().flatten() {
                    r.secrets.extend(s(&e["valueFrom"]["secretKeyRef"]["name"]));
                    r.configmaps
                        .extend(s(&e["valueFrom"]["configMapKeyRef"]["name"]));
                }
                for e in c["envFrom"].as_array().into_iter().flatten() {
                    r.secrets.extend(s(&e["secretRef"]["name"]));
                    r.configmaps.extend(s(&e["configMapRef"]["name"]));
                }
            }
        }
        for v in spec["volumes"].as_array().into_iter().flatten() {
            r.secrets.extend(s(&v["secret"]["secretName"]));
            r.configmaps.extend(s(&v["configMap"]["name"]));
            r.pvcs.extend(s(&v["persistentVolumeClaim"]["claimName"]));
            if v["ephemeral"].is_object() {
                // Generic ephemeral volumes: the claim is named <pod>-<volume>.
                if let Some(vn) = s(&v["name"]) {
                    r.pvcs.insert(format!("{pod_name}-{vn}"));
                }
            }
            for src in v["projected"]["sources"].as_array().into_iter().flatten() {
                r.secrets.extend(s(&src["secret"]["name"]));
                r.configmaps.extend(s(&src["configMap"]["name"]));
            }
            // In-tree plugins that name a secret for their credentials.
            for plugin in [
                "azureFile",
                "cephfs",
                "cinder",
                "flexVolume",
                "iscsi",
                "rbd",
                "scaleIO",
                "storageos",
                "csi",
            ] {
                let p = &v[plugin];
                r.secrets.extend(s(&p["secretName"]));
                r.secrets.extend(s(&p["secretRef"]["name"]));
                r.secrets.extend(s(&p["nodePublishSecretRef"]["name"]));
            }
        }
        r
    }
}

/// The kinds of object a node may reach through its pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vertex {
    Pod,
    Secret,
    ConfigMap,
    Pvc,
    ServiceAccount,
}

#[derive(Debug, Default)]
struct GraphInner {
    /// (namespace, name) → references, for pods bound to a node.
    pods: HashMap<(String, String), PodRefs>,
    /// node → its pods.
    by_node: HashMap<String, HashSet<(String, String)>>,
}

/// Which objects each node's pods reference (upstream's node graph, pods only).
#[derive(Debug, Default)]
pub struct Graph {
    inner: RwLock<GraphInner>,
    synced: AtomicBool,
}

impl Graph {
    fn remove_locked(g: &mut GraphInner, key: &(String, String)) {
        if let Some(old) = g.pods.remove(key) {
            if let Some(set) = g.by_node.get_mut(&old.node) {
                set.remove(key);
                if set.is_empty() {
                    g.by_node.remove(&old.node);
                }
            }
        }
    }

    fn key(pod: &Value) -> (String, String) {
        let m = &pod["metadata"];
        (
            m["namespace"].as_str().unwrap_or_default().to_string(),
            m["name"].as_str().unwrap_or_default().to_string(),
        )
    }

    /// Adds or updates a pod (an unbound pod references nothing a node may read).
    pub fn upsert(&self, pod: &Value) {
        let key = Self::key(pod);
        let refs = PodRefs::of(pod);
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        Self::remove_locked(&mut g, &key);
        if refs.node.is_empty() {
            return;
        }
        g.by_node
            .entry(refs.node.clone())
            .or_default()
            .insert(key.clone());
        g.pods.insert(key, refs);
    }

    pub fn remove(&self, pod: &Value) {
        let key = Self::key(pod);
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        Self::remove_locked(&mut g, &key);
    }

    /// Replaces everything with a fresh list and marks the graph synced.
    pub fn replace(&self, pods: &[Value]) {
        {
            let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
            *g = GraphInner::default();
        }
        for p in pods {
            self.upsert(p);
        }
        self.synced.store(true, Ordering::SeqCst);
    }

    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::SeqCst)
    }

    /// Whether some pod bound to `node` is, or references, the object.
    pub fn has_path(&self, node: &str, kind: Vertex, ns: &str, name: &str) -> bool {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let Some(pods) = g.by_node.get(node) else {
            return false;
        };
        pods.iter().filter(|(pns, _)| pns == ns).any(|k| {
            let Some(r) = g.pods.get(k) else {
                return false;
            };
            match kind {
                Vertex::Pod => k.1 == name,
                Vertex::Secret => r.secrets.contains(name),
                Vertex::ConfigMap => r.configmaps.contains(name),
                Vertex::Pvc => r.pvcs.contains(name),
                Vertex::ServiceAccount => r.service_account == name,
            }
        })
    }
}

/// The Node authorizer: the graph plus the static node rules.
#[derive(Debug)]
pub struct NodeAuthorizer {
    graph: Arc<Graph>,
    rules: Vec<PolicyRule>,
    feeding: AtomicBool,
}

impl Default for NodeAuthorizer {
    fn default() -> Self {
        Self::new()
    }
}

fn no_opinion(why: impl Into<String>) -> Decision {
    Decision::Deny(why.into())
}

impl NodeAuthorizer {
    pub fn new() -> Self {
        NodeAuthorizer {
            graph: Arc::new(Graph::default()),
            rules: kelson_rbac::bootstrap::node_rules(),
            feeding: AtomicBool::new(false),
        }
    }

    pub fn graph(&self) -> &Arc<Graph> {
        &self.graph
    }

    /// Starts feeding the graph from storage (once; stops when the API is dropped).
    pub fn start_feeding(&self, api: &Arc<Api>) {
        if !self.feeding.swap(true, Ordering::SeqCst) {
            tokio::spawn(feed_graph(Arc::downgrade(api), self.graph.clone()));
        }
    }

    /// Waits (bounded) until the graph holds a first full list, so readiness means kubelets
    /// are judged against the real pods.
    pub async fn wait_synced(&self, timeout: Duration) -> Result<(), ApiError> {
        let deadline = Instant::now() + timeout;
        while !self.graph.is_synced() {
            if Instant::now() > deadline {
                return Err(ApiError::service_unavailable(
                    "the node authorizer graph did not sync in time",
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    fn static_rules(&self, attrs: &Attributes) -> Decision {
        if kelson_rbac::rule::rules_allow(&attrs.to_rbac(), &self.rules) {
            Decision::Allow
        } else {
            no_opinion("")
        }
    }

    /// Upstream's `authorize`: a named object reachable from the node in the graph.
    fn by_graph(&self, node: &str, kind: Vertex, attrs: &Attributes) -> Decision {
        if attrs.name.is_empty() {
            return no_opinion("No Object name found");
        }
        if !self.graph.is_synced() {
            return no_opinion("node authorizer graph not synced yet");
        }
        if self
            .graph
            .has_path(node, kind, &attrs.namespace, &attrs.name)
        {
            Decision::Allow
        } else {
            no_opinion(format!(
                "no relationship found between node '{node}' and this object"
            ))
        }
    }

    fn read_namespaced(&self, node: &str, kind: Vertex, attrs: &Attributes) -> Decision {
        if !matches!(attrs.verb.as_str(), "get" | "list" | "watch") {
            return no_opinion("can only read resources of this type");
        }
        if !attrs.subresource.is_empty() {
            return no_opinion("cannot read subresource");
        }
        if attrs.namespace.is_empty() {
            return no_opinion("can only read namespaced object of this type");
        }
        self.by_graph(node, kind, attrs)
    }

    fn node_object(&self, node: &str, attrs: &Attributes) -> Decision {
        match (attrs.subresource.as_str(), attrs.verb.as_str()) {
            // NodeRestriction admission limits writes to the node's own object.
            ("", "create" | "update" | "patch") | ("status", "update" | "patch") => Decision::Allow,
            ("", "get" | "list" | "watch") => match attrs.name.as_str() {
                n if n == node => Decision::Allow,
                "" => no_opinion(format!(
                    "node '{node}' cannot read all nodes, only its own Node object"
                )),
                other => no_opinion(format!(
                    "node '{node}' cannot read '{other}', only its own Node object"
                )),
            },
            _ => no_opinion(""),
        }
    }

    fn pod(&self, node: &str, attrs: &Attributes) -> Decision {
        match (attrs.subresource.as_str(), attrs.verb.as_str()) {
            ("", "get") => self.by_graph(node, Vertex::Pod, attrs),
            // Mirror pods (NodeRestriction narrows them) and the node's own pod list.
            ("", "list" | "watch" | "create" | "delete") => self.static_rules(attrs),
            ("status", "update" | "patch") | ("eviction", "create") => {
                self.by_graph(node, Vertex::Pod, attrs)
            }
            ("status", _) => no_opinion("can only get, update or patch pod status"),
            ("eviction", _) => no_opinion("can only create pod eviction"),
            _ => no_opinion(""),
        }
    }

    fn lease(&self, node: &str, attrs: &Attributes) -> Decision {
        if !matches!(
            attrs.verb.as_str(),
            "get" | "create" | "update" | "patch" | "delete"
        ) {
            return no_opinion("can only get, create, update, patch, or delete a node lease");
        }
        if attrs.namespace != NODE_LEASE_NAMESPACE {
            return no_opinion(format!(
                "can only access leases in the {NODE_LEASE_NAMESPACE} namespace"
            ));
        }
        // A create names no object: the body's name is checked by NodeRestriction.
        if attrs.verb != "create" && attrs.name != node {
            return no_opinion(
                "can only access node lease with the same name as the requesting node",
            );
        }
        Decision::Allow
    }
}

impl Authorizer for NodeAuthorizer {
    fn authorize(&self, user: &User, attrs: &Attributes) -> Decision {
        let Some(node) = node_name(user) else {
            return no_opinion("");
        };
        if node.is_empty() {
            return no_opinion("unknown node");
        }
        if !attrs.resource_request {
            return self.static_rules(attrs);
        }
        match (attrs.group.as_str(), attrs.resource.as_str()) {
            ("", "nodes") => self.node_object(node, attrs),
            ("", "pods") => self.pod(node, attrs),
            ("", "secrets") => self.read_namespaced(node, Vertex::Secret, attrs),
            ("", "configmaps") => self.read_namespaced(node, Vertex::ConfigMap, attrs),
            ("", "persistentvolumeclaims") if attrs.subresource.is_empty() => {
                self.read_namespaced(node, Vertex::Pvc, attrs)
            }
            ("", "persistentvolumeclaims") => {
                if matches!(attrs.verb.as_str(), "get" | "update" | "patch") {
                    self.by_graph(node, Vertex::Pvc, attrs)
                } else {
                    no_opinion("can only get, update or patch persistentvolumeclaim status")
                }
            }
            // Not in the graph yet (see the module doc): never reachable.
            ("", "persistentvolumes") => no_opinion(format!(
                "no relationship found between node '{node}' and this object"
            )),
            ("", "serviceaccounts") if attrs.subresource == "token" => {
                if attrs.verb == "create" {
                    self.by_graph(node, Vertex::ServiceAccount, attrs)
                } else {
                    no_opinion("can only create tokens for individual service accounts")
                }
            }
            ("coordination.k8s.io", "leases") => self.lease(node, attrs),
            _ => self.static_rules(attrs),
        }
    }
    fn as_node(&self) -> Option<&NodeAuthorizer> {
        Some(self)
    }
}

// ---------------------------------------------------------------------------------------------
// NodeRestriction admission

/// The kubelet's own labels under `kubernetes.io` / `k8s.io` it may set (upstream's
/// `kubeletapis.KubeletLabels()`).
const KUBELET_LABELS: &[&str] = &[
    "kubernetes.io/hostname",
    "kubernetes.io/arch",
    "kubernetes.io/os",
    "beta.kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type",
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
];
/// Label namespaces a kubelet may use freely (upstream's `KubeletLabelNamespaces()`).
const KUBELET_LABEL_NAMESPACES: &[&str] = &["kubelet.kubernetes.io", "node.kubernetes.io"];
const RESTRICTED_NAMESPACE: &str = "node-restriction.kubernetes.io";
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

fn in_domain(domain: &str, ns: &str) -> bool {
    domain == ns || domain.ends_with(&format!(".{ns}"))
}

/// Labels a node may not set on itself (upstream's `getForbiddenLabels`), sorted.
fn forbidden_labels(modified: &BTreeSet<String>) -> Vec<String> {
    modified
        .iter()
        .filter(|label| {
            let Some((domain, _)) = label.split_once('/') else {
                return false;
            };
            if in_domain(domain, RESTRICTED_NAMESPACE) {
                return true;
            }
            if !(in_domain(domain, "kubernetes.io") || in_domain(domain, "k8s.io")) {
                return false;
            }
            !KUBELET_LABELS.contains(&label.as_str())
                && !KUBELET_LABEL_NAMESPACES
                    .iter()
                    .any(|ns| in_domain(domain, ns))
        })
        .cloned()
        .collect()
}

/// Keys added, removed or changed between two `metadata.labels`.
fn modified_labels(new: &Value, old: &Value) -> BTreeSet<String> {
    let empty = serde_json::Map::new();
    let n = new.as_object().unwrap_or(&empty);
    let o = old.as_object().unwrap_or(&empty);
    n.keys()
        .chain(o.keys())
        .filter(|k| n.get(*k) != o.get(*k))
        .cloned()
        .collect()
}

fn restricted(info: &registry::ResourceInfo, name: &str, why: String) -> ApiError {
    ApiError::forbidden_for(info.group, info.resource, name, &why)
}

/// The requesting node, if the request comes from one.
fn requesting_node() -> Option<String> {
    let user = crate::reqctx::user()?;
    node_name(&user).map(String::from)
}

/// NodeRestriction for creates: a node creates only its own Node (without labels outside the
/// allowed set) and Lease, and only mirror pods bound to itself that reference nothing.
pub fn admit_create(info: &registry::ResourceInfo, obj: &Value) -> Result<(), ApiError> {
    let Some(node) = requesting_node() else {
        return Ok(());
    };
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let deny = |why: String| Err(restricted(info, name, why));
    if node.is_empty() {
        return deny("could not determine node from user \"system:node:\"".into());
    }
    match (info.group, info.resource) {
        ("", "nodes") => {
            if name != node {
                return deny(format!(
                    "node {node:?} is not allowed to modify node {name:?}"
                ));
            }
            if !obj["spec"]["configSource"].is_null() {
                return deny(format!(
                    "node {node:?} is not allowed to create pods with a non-nil configSource"
                ));
            }
            let bad = forbidden_labels(&modified_labels(&obj["metadata"]["labels"], &Value::Null));
            if !bad.is_empty() {
                return deny(format!(
                    "node {node:?} is not allowed to set the following labels: {}",
                    bad.join(", ")
                ));
            }
            Ok(())
        }
        ("", "pods") => {
            if obj["metadata"]["annotations"][MIRROR_ANNOTATION].is_null() {
                return deny(format!("pod does not have \"{MIRROR_ANNOTATION}\" annotation, node {node:?} can only create mirror pods"));
            }
            if obj["spec"]["nodeName"].as_str() != Some(node.as_str()) {
                return deny(format!(
                    "node {node:?} can only create pods with spec.nodeName set to itself"
                ));
            }
            let refs = PodRefs::of(obj);
            let sa = obj["spec"]["serviceAccountName"]
                .as_str()
                .filter(|s| !s.is_empty() && *s != "default");
            if sa.is_some() {
                return deny(format!(
                    "node {node:?} can not create pods that reference a service account"
                ));
            }
            for (what, set) in [
                ("secrets", &refs.secrets),
                ("configmaps", &refs.configmaps),
                ("persistentvolumeclaims", &refs.pvcs),
            ] {
                if !set.is_empty() {
                    return deny(format!(
                        "node {node:?} can not create pods that reference {what}"
                    ));
                }
            }
            Ok(())
        }
        ("coordination.k8s.io", "leases") if name != node => {
            deny("can only access node lease with the same name as the requesting node".into())
        }
        _ => Ok(()),
    }
}

/// NodeRestriction for updates (and patches) of Nodes and pod status: only its own Node, no
/// change of taints, owner references or labels outside the allowed set; only status of pods
/// bound to itself.
pub fn admit_update(
    info: &registry::ResourceInfo,
    cur: &Value,
    new: &Value,
    status_only: bool,
) -> Result<(), ApiError> {
    let Some(node) = requesting_node() else {
        return Ok(());
    };
    let name = cur["metadata"]["name"].as_str().unwrap_or_default();
    let deny = |why: String| Err(restricted(info, name, why));
    match (info.group, info.resource) {
        ("", "nodes") => {
            if name != node {
                return deny(format!(
                    "node {node:?} is not allowed to modify node {name:?}"
                ));
            }
            if status_only {
                return Ok(());
            }
            if new["metadata"]["ownerReferences"] != cur["metadata"]["ownerReferences"] {
                return deny(format!(
                    "node {node:?} is not allowed to modify ownerReferences"
                ));
            }
            let taints = |v: &Value| {
                let t = &v["spec"]["taints"];
                if t.as_array().is_some_and(|a| a.is_empty()) {
                    Value::Null
                } else {
                    t.clone()
                }
            };
            if taints(new) != taints(cur) {
                return deny(format!("node {node:?} is not allowed to modify taints"));
            }
            let bad = forbidden_labels(&modified_labels(
                &new["metadata"]["labels"],
                &cur["metadata"]["labels"],
            ));
            if !bad.is_empty() {
                return deny(format!(
                    "is not allowed to modify labels: {}",
                    bad.join(", ")
                ));
            }
            Ok(())
        }
        ("", "pods") if cur["spec"]["nodeName"].as_str() != Some(node.as_str()) => deny(format!(
            "node {node:?} can only update pod status for pods with spec.nodeName set to itself"
        )),
        _ => Ok(()),
    }
}

/// One list + watch pass over pods: returns when the watch ends, fails, or the API is gone.
async fn list_watch(api: &Weak<Api>, graph: &Graph) -> Result<(), String> {
    let (prefix, mut stream) = {
        let api = api.upgrade().ok_or("API server gone")?;
        let info = registry::lookup("", "v1", "pods").expect("pods are registered");
        let prefix = info.key_prefix(&api.root, None);
        let list = api
            .store
            .list(&prefix, &ListOptions::default(), None)
            .await
            .map_err(|e| format!("listing pods: {e}"))?;
        graph.replace(&list.items);
        let stream = api
            .store
            .watch(&prefix, true, list.resource_version, None, false)
            .await
            .map_err(|e| format!("watching pods: {e}"))?;
        (prefix, stream)
    };
    while let Some(ev) = stream.next().await {
        if api.strong_count() == 0 {
            return Ok(());
        }
        match &ev {
            WatchEvent::Added(o) | WatchEvent::Modified(o) => graph.upsert(o),
            WatchEvent::Deleted(o) => graph.remove(o),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => return Err(format!("watching {prefix}: {e}")),
        }
    }
    Err(format!("watch of {prefix} ended"))
}

/// Keeps `graph` in step with the stored pods until the API is dropped.
async fn feed_graph(api: Weak<Api>, graph: Arc<Graph>) {
    let mut delay = Duration::from_millis(100);
    while api.strong_count() > 0 {
        let started = Instant::now();
        if let Err(e) = list_watch(&api, &graph).await {
            tracing::warn!(error = %e, "node authorizer graph: relisting");
        }
        if started.elapsed() > Duration::from_secs(10) {
            delay = Duration::from_millis(100);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node_user(n: &str) -> User {
        User {
            name: format!("{NODE_USER_PREFIX}{n}"),
            groups: vec![NODES_GROUP.into(), "system:authenticated".into()],
        }
    }

    fn res(verb: &str, resource: &str, ns: &str, name: &str) -> Attributes {
        let (resource, sub) = resource.split_once('/').unwrap_or((resource, ""));
        Attributes {
            verb: verb.into(),
            group: if resource == "leases" {
                "coordination.k8s.io".into()
            } else {
                String::new()
            },
            resource: resource.into(),
            subresource: sub.into(),
            namespace: ns.into(),
            name: name.into(),
            resource_request: true,
            ..Default::default()
        }
    }

    fn authz() -> NodeAuthorizer {
        let a = NodeAuthorizer::new();
        a.graph().replace(&[
            json!({"metadata": {"namespace": "default", "name": "web"},
                   "spec": {"nodeName": "n1", "serviceAccountName": "sa1",
                            "imagePullSecrets": [{"name": "pull"}],
                            "containers": [{"name": "c",
                                "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "env-secret", "key": "k"}}}],
                                "envFrom": [{"configMapRef": {"name": "envcm"}}]}],
                            "volumes": [{"name": "s", "secret": {"secretName": "vol-secret"}},
                                        {"name": "p", "projected": {"sources": [{"configMap": {"name": "kube-root-ca.crt"}}]}},
                                        {"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]}}),
            json!({"metadata": {"namespace": "default", "name": "other"},
                   "spec": {"nodeName": "n2", "volumes": [{"name": "s", "secret": {"secretName": "n2-secret"}}]}}),
            json!({"metadata": {"namespace": "default", "name": "pending"},
                   "spec": {"volumes": [{"name": "s", "secret": {"secretName": "pending-secret"}}]}}),
        ]);
        a
    }

    #[test]
    fn identity() {
        assert_eq!(node_name(&node_user("n1")), Some("n1"));
        let not_in_group = User {
            name: "system:node:n1".into(),
            groups: vec![],
        };
        assert_eq!(node_name(&not_in_group), None);
        assert_eq!(
            NodeAuthorizer::new().authorize(&not_in_group, &res("get", "nodes", "", "n1")),
            Decision::Deny(String::new())
        );
    }

    #[test]
    fn nodes_read_only_their_own_node() {
        let a = authz();
        let n1 = node_user("n1");
        assert_eq!(
            a.authorize(&n1, &res("get", "nodes", "", "n1")),
            Decision::Allow
        );
        assert_eq!(
            a.authorize(&n1, &res("get", "nodes", "", "n2")),
            Decision::Deny("node 'n1' cannot read 'n2', only its own Node object".into())
        );
        assert_eq!(
            a.authorize(&n1, &res("list", "nodes", "", "")),
            Decision::Deny("node 'n1' cannot read all nodes, only its own Node object".into())
        );
        assert_eq!(
            a.authorize(&n1, &res("patch", "nodes/status", "", "n1")),
            Decision::Allow
        );
        assert!(matches!(
            a.authorize(&n1, &res("delete", "nodes", "", "n1")),
            Decision::Deny(_)
        ));
    }

    #[test]
    fn secrets_and_configmaps_through_bound_pods() {
        let a = authz();
        let n1 = node_user("n1");
        for s in ["pull", "env-secret", "vol-secret"] {
            assert_eq!(
                a.authorize(&n1, &res("get", "secrets", "default", s)),
                Decision::Allow,
                "{s}"
            );
        }
        let no_rel =
            Decision::Deny("no relationship found between node 'n1' and this object".into());
        assert_eq!(
            a.authorize(&n1, &res("get", "secrets", "default", "n2-secret")),
            no_rel
        );
        assert_eq!(
            a.authorize(&n1, &res("get", "secrets", "default", "pending-secret")),
            no_rel
        );
        assert_eq!(
            a.authorize(&n1, &res("get", "secrets", "other-ns", "vol-secret")),
            no_rel
        );
        assert_eq!(
            a.authorize(&n1, &res("list", "secrets", "default", "")),
            Decision::Deny("No Object name found".into())
        );
        assert_eq!(
            a.authorize(&n1, &res("update", "secrets", "default", "pull")),
            Decision::Deny("can only read resources of this type".into())
        );
        for cm in ["envcm", "kube-root-ca.crt"] {
            assert_eq!(
                a.authorize(&n1, &res("watch", "configmaps", "default", cm)),
                Decision::Allow
            );
        }
        assert_eq!(
            a.authorize(
                &n1,
                &res("get", "persistentvolumeclaims", "default", "data")
            ),
            Decision::Allow
        );
        assert_eq!(
            a.authorize(
                &node_user("n2"),
                &res("get", "secrets", "default", "n2-secret")
            ),
            Decision::Allow
        );
    }

    #[test]
    fn pods_tokens_leases_and_the_rest() {
        let a = authz();
        let n1 = node_user("n1");
        assert_eq!(
            a.authorize(&n1, &res("get", "pods", "default", "web")),
            Decision::Allow
        );
        assert!(matches!(
            a.authorize(&n1, &res("get", "pods", "default", "other")),
            Decision::Deny(_)
        ));
        assert_eq!(
            a.authorize(&n1, &res("patch", "pods/status", "default", "web")),
            Decision::Allow
        );
        assert!(matches!(
            a.authorize(&n1, &res("patch", "pods/status", "default", "other")),
            Decision::Deny(_)
        ));
        assert_eq!(
            a.authorize(&n1, &res("list", "pods", "", "")),
            Decision::Allow
        );
        assert_eq!(
            a.authorize(
                &n1,
                &res("create", "serviceaccounts/token", "default", "sa1")
            ),
            Decision::Allow
        );
        assert!(matches!(
            a.authorize(
                &n1,
                &res("create", "serviceaccounts/token", "default", "default")
            ),
            Decision::Deny(_)
        ));
        assert_eq!(
            a.authorize(&n1, &res("update", "leases", NODE_LEASE_NAMESPACE, "n1")),
            Decision::Allow
        );
        assert!(matches!(
            a.authorize(&n1, &res("update", "leases", NODE_LEASE_NAMESPACE, "n2")),
            Decision::Deny(_)
        ));
        assert!(matches!(
            a.authorize(&n1, &res("get", "leases", "default", "n1")),
            Decision::Deny(_)
        ));
        // Not subdivided: the static node rules.
        assert_eq!(
            a.authorize(&n1, &res("create", "events", "default", "")),
            Decision::Allow
        );
        assert_eq!(
            a.authorize(&n1, &res("list", "services", "", "")),
            Decision::Allow
        );
        assert!(matches!(
            a.authorize(&n1, &res("delete", "services", "default", "x")),
            Decision::Deny(_)
        ));
        // Unbinding (deletion) removes the pod's edges.
        a.graph()
            .remove(&json!({"metadata": {"namespace": "default", "name": "web"}}));
        assert!(matches!(
            a.authorize(&n1, &res("get", "secrets", "default", "pull")),
            Decision::Deny(_)
        ));
    }
}
