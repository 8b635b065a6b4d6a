//! The served resources and the discovery documents built from them.
//!
//! A static table in the shape of docs/apiserver-design.md's `ResourceInfo` (the interface
//! kelson-apiresources is to export, with many more kinds and generated OpenAPI); until that
//! crate lands the handlers read this one. Discovery is the legacy form (`/api`, `/apis`,
//! `/apis/<g>/<v>`): clients that ask for aggregated discovery get it too, because they fall
//! back when the answer is not an `APIGroupDiscoveryList`.

use serde_json::{json, Value};

/// A subresource the generic handlers know how to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    Status,
    Scale,
    Binding,
}

impl Subresource {
    pub fn name(self) -> &'static str {
        match self {
            Subresource::Status => "status",
            Subresource::Scale => "scale",
            Subresource::Binding => "binding",
        }
    }
}

#[derive(Debug)]
pub struct ResourceInfo {
    pub group: &'static str,
    pub version: &'static str,
    pub resource: &'static str,
    pub kind: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub verbs: &'static [&'static str],
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub subresources: &'static [Subresource],
}

impl ResourceInfo {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    pub fn has(&self, s: Subresource) -> bool {
        self.subresources.contains(&s)
    }
    pub fn supports(&self, verb: &str) -> bool {
        self.verbs.contains(&verb)
    }
    /// The etcd key prefix (ending in '/') for this resource, optionally within a namespace.
    pub fn key_prefix(&self, root: &str, ns: Option<&str>) -> String {
        let mut k = root.trim_end_matches('/').to_string();
        k.push('/');
        if !self.group.is_empty() {
            k.push_str(self.group);
            k.push('/');
        }
        k.push_str(self.resource);
        k.push('/');
        if let Some(ns) = ns {
            k.push_str(ns);
            k.push('/');
        }
        k
    }
}

const ALL: &[&str] = &[
    "create", "delete", "deletecollection", "get", "list", "patch", "update", "watch",
];
const NO_COLL: &[&str] = &["create", "delete", "get", "list", "patch", "update", "watch"];
use Subresource::*;

macro_rules! r {
    ($g:expr, $v:expr, $res:expr, $kind:expr, $sing:expr, $ns:expr, $verbs:expr, $short:expr, $cat:expr, $sub:expr) => {
        ResourceInfo {
            group: $g,
            version: $v,
            resource: $res,
            kind: $kind,
            singular: $sing,
            namespaced: $ns,
            verbs: $verbs,
            short_names: $short,
            categories: $cat,
            subresources: $sub,
        }
    };
}

static RESOURCES: &[ResourceInfo] = &[
    r!("", "v1", "namespaces", "Namespace", "namespace", false, NO_COLL, &["ns"], &[], &[Status]),
    r!("", "v1", "pods", "Pod", "pod", true, ALL, &["po"], &["all"], &[Status, Binding]),
    r!("", "v1", "services", "Service", "service", true, ALL, &["svc"], &["all"], &[Status]),
    r!("", "v1", "configmaps", "ConfigMap", "configmap", true, ALL, &["cm"], &[], &[]),
    r!("", "v1", "secrets", "Secret", "secret", true, ALL, &[], &[], &[]),
    r!("", "v1", "nodes", "Node", "node", false, ALL, &["no"], &[], &[Status]),
    r!("", "v1", "serviceaccounts", "ServiceAccount", "serviceaccount", true, ALL, &["sa"], &[], &[]),
    r!("", "v1", "events", "Event", "event", true, ALL, &["ev"], &[], &[]),
    r!("", "v1", "endpoints", "Endpoints", "endpoints", true, ALL, &["ep"], &[], &[]),
    r!("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", "persistentvolumeclaim", true, ALL, &["pvc"], &[], &[Status]),
    r!("", "v1", "persistentvolumes", "PersistentVolume", "persistentvolume", false, ALL, &["pv"], &[], &[Status]),
    r!("", "v1", "resourcequotas", "ResourceQuota", "resourcequota", true, ALL, &["quota"], &[], &[Status]),
    r!("", "v1", "limitranges", "LimitRange", "limitrange", true, ALL, &["limits"], &[], &[]),
    r!("apps", "v1", "deployments", "Deployment", "deployment", true, ALL, &["deploy"], &["all"], &[Status, Scale]),
    r!("apps", "v1", "replicasets", "ReplicaSet", "replicaset", true, ALL, &["rs"], &["all"], &[Status, Scale]),
    r!("apps", "v1", "statefulsets", "StatefulSet", "statefulset", true, ALL, &["sts"], &["all"], &[Status, Scale]),
    r!("apps", "v1", "daemonsets", "DaemonSet", "daemonset", true, ALL, &["ds"], &["all"], &[Status]),
    r!("apps", "v1", "controllerrevisions", "ControllerRevision", "controllerrevision", true, ALL, &[], &[], &[]),
    r!("batch", "v1", "jobs", "Job", "job", true, ALL, &[], &["all"], &[Status]),
    r!("batch", "v1", "cronjobs", "CronJob", "cronjob", true, ALL, &["cj"], &["all"], &[Status]),
    r!("coordination.k8s.io", "v1", "leases", "Lease", "lease", true, ALL, &[], &[], &[]),
    r!("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", "endpointslice", true, ALL, &[], &[], &[]),
    r!("networking.k8s.io", "v1", "ingresses", "Ingress", "ingress", true, ALL, &["ing"], &[], &[Status]),
    r!("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", "networkpolicy", true, ALL, &["netpol"], &[], &[]),
    r!("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", "poddisruptionbudget", true, ALL, &["pdb"], &[], &[Status]),
    r!("rbac.authorization.k8s.io", "v1", "roles", "Role", "role", true, ALL, &[], &[], &[]),
    r!("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", "rolebinding", true, ALL, &[], &[], &[]),
    r!("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", "clusterrole", false, ALL, &[], &[], &[]),
    r!("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", "clusterrolebinding", false, ALL, &[], &[], &[]),
    r!("scheduling.k8s.io", "v1", "priorityclasses", "PriorityClass", "priorityclass", false, ALL, &["pc"], &[], &[]),
    r!("storage.k8s.io", "v1", "storageclasses", "StorageClass", "storageclass", false, ALL, &["sc"], &[], &[]),
];

pub fn resources() -> &'static [ResourceInfo] {
    RESOURCES
}

pub fn lookup(group: &str, version: &str, resource: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.resource == resource)
}

pub fn by_kind(group: &str, version: &str, kind: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.kind == kind)
}

/// Groups in the order they are advertised (the legacy group is served at /api).
fn groups() -> Vec<&'static str> {
    let mut gs: Vec<&str> = Vec::new();
    for r in RESOURCES {
        if !r.group.is_empty() && !gs.contains(&r.group) {
            gs.push(r.group);
        }
    }
    gs
}

pub fn group_versions(group: &str) -> Vec<&'static str> {
    let mut vs: Vec<&str> = Vec::new();
    for r in RESOURCES.iter().filter(|r| r.group == group) {
        if !vs.contains(&r.version) {
            vs.push(r.version);
        }
    }
    vs
}

/// `GET /api`: APIVersions.
pub fn discovery_api(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_json(g: &str) -> Value {
    let vs = group_versions(g);
    let list: Vec<Value> = vs
        .iter()
        .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    json!({
        "name": g,
        "versions": list,
        "preferredVersion": list.first().cloned().unwrap_or(Value::Null),
    })
}

/// `GET /apis`: APIGroupList.
pub fn discovery_apis() -> Value {
    json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": groups().into_iter().map(group_json).collect::<Vec<_>>(),
    })
}

/// `GET /apis/<g>`: APIGroup.
pub fn discovery_group(g: &str) -> Option<Value> {
    if group_versions(g).is_empty() || g.is_empty() {
        return None;
    }
    let mut v = group_json(g);
    v["kind"] = json!("APIGroup");
    v["apiVersion"] = json!("v1");
    Some(v)
}

/// `GET /api/v1` or `/apis/<g>/<v>`: APIResourceList.
pub fn discovery_group_version(g: &str, v: &str) -> Option<Value> {
    let rs: Vec<&ResourceInfo> = RESOURCES
        .iter()
        .filter(|r| r.group == g && r.version == v)
        .collect();
    if rs.is_empty() {
        return None;
    }
    let mut list = Vec::new();
    for r in rs {
        let mut e = json!({
            "name": r.resource,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs,
        });
        if !r.short_names.is_empty() {
            e["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            e["categories"] = json!(r.categories);
        }
        list.push(e);
        for s in r.subresources {
            let (kind, verbs, group, version): (&str, &[&str], &str, &str) = match s {
                Subresource::Status => (r.kind, &["get", "patch", "update"], "", ""),
                Subresource::Scale => (
                    "Scale",
                    &["get", "patch", "update"],
                    "autoscaling",
                    "v1",
                ),
                Subresource::Binding => ("Binding", &["create"], "", ""),
            };
            let mut e = json!({
                "name": format!("{}/{}", r.resource, s.name()),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": kind,
                "verbs": verbs,
            });
            if !group.is_empty() {
                e["group"] = json!(group);
                e["version"] = json!(version);
            }
            list.push(e);
        }
    }
    let gv = if g.is_empty() { v.to_string() } else { format!("{g}/{v}") };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": list,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_and_keys() {
        let d = lookup("apps", "v1", "deployments").unwrap();
        assert_eq!(d.kind, "Deployment");
        assert_eq!(d.key_prefix("/registry", Some("default")), "/registry/apps/deployments/default/");
        let p = by_kind("", "v1", "Pod").unwrap();
        assert_eq!(p.key_prefix("/registry", None), "/registry/pods/");
        assert!(lookup("", "v1", "nope").is_none());
    }

    #[test]
    fn discovery_lists_subresources() {
        let d = discovery_group_version("apps", "v1").unwrap();
        let names: Vec<&str> = d["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"deployments/scale"));
        assert!(discovery_apis()["groups"].as_array().unwrap().iter().any(|g| g["name"] == "apps"));
        assert!(discovery_group("").is_none());
    }
}
